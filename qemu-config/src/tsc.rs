//! The host's TSC frequency, for a microvm guest under TCG. TCG hands the guest the host's own
//! time-stamp counter, and microvm has no HPET or ACPI PM timer to calibrate it against: the guest
//! kernel falls back to the emulated PIT, whose calibration fails or hangs the boot on a busy host.
//! The frequency measured here goes on the guest's command line (`tsc_early_khz=`) instead.

use std::time::{Duration, Instant};

/// How long the counter is measured against the monotonic clock: the error of one bracketed
/// reading (well under a microsecond) over this span stays below 0.05%.
const SPAN: Duration = Duration::from_millis(2);
/// Readings taken at each end; the one bracketed most tightly is kept.
const TRIES: usize = 8;
/// Frequencies outside this range (kHz) mean the measurement went wrong.
const PLAUSIBLE_KHZ: std::ops::RangeInclusive<u64> = 200_000..=10_000_000;

/// The host TSC's frequency in kHz, or `None` where it cannot be relied on: not x86_64, a TSC
/// that does not tick at a constant rate (CPUID's invariant-TSC bit), or an implausible result.
pub fn host_tsc_khz() -> Option<u64> {
    if !invariant_tsc() {
        return None;
    }
    let (t0, c0) = reading()?;
    while t0.elapsed() < SPAN {
        std::hint::spin_loop();
    }
    let (t1, c1) = reading()?;
    khz(c1.checked_sub(c0)?, t1.duration_since(t0))
}

/// The frequency in kHz of `cycles` counted over `elapsed`, if plausible.
pub fn khz(cycles: u64, elapsed: Duration) -> Option<u64> {
    let nanos = u64::try_from(elapsed.as_nanos()).ok()?;
    if nanos == 0 {
        return None;
    }
    let khz = u128::from(cycles) * 1_000_000 / u128::from(nanos);
    u64::try_from(khz)
        .ok()
        .filter(|k| PLAUSIBLE_KHZ.contains(k))
}

/// One (instant, counter) pair: the counter read on both sides of the clock, the tightest of
/// `TRIES` brackets, its midpoint.
fn reading() -> Option<(Instant, u64)> {
    let mut best: Option<(u64, Instant, u64)> = None;
    for _ in 0..TRIES {
        let before = rdtsc()?;
        let now = Instant::now();
        let after = rdtsc()?;
        let width = after.checked_sub(before)?;
        if best.is_none_or(|(w, _, _)| width < w) {
            best = Some((width, now, before + width / 2));
        }
    }
    best.map(|(_, t, c)| (t, c))
}

#[cfg(target_arch = "x86_64")]
fn rdtsc() -> Option<u64> {
    // SAFETY: RDTSC exists on every x86_64 CPU and has no memory effects.
    Some(unsafe { core::arch::x86_64::_rdtsc() })
}

#[cfg(not(target_arch = "x86_64"))]
fn rdtsc() -> Option<u64> {
    None
}

#[cfg(target_arch = "x86_64")]
fn invariant_tsc() -> bool {
    use core::arch::x86_64::__cpuid;
    // Leaf 0x8000_0000 reports the highest extended leaf; 0x8000_0007 is read only when it exists.
    __cpuid(0x8000_0000).eax >= 0x8000_0007 && __cpuid(0x8000_0007).edx & (1 << 8) != 0
}

#[cfg(not(target_arch = "x86_64"))]
fn invariant_tsc() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequency_from_cycles_and_time() {
        assert_eq!(khz(5_192_272, Duration::from_millis(2)), Some(2_596_136));
        assert_eq!(khz(1, Duration::ZERO), None);
        assert_eq!(khz(1_000, Duration::from_millis(2)), None, "500 kHz");
        assert_eq!(khz(u64::MAX, Duration::from_nanos(1)), None);
    }

    #[test]
    fn this_host_measures_consistently() {
        // A host whose kernel reports an invariant TSC gets a frequency, the same twice within 1%.
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        if !cpuinfo.contains(" nonstop_tsc") {
            return;
        }
        let (a, b) = (host_tsc_khz().unwrap(), host_tsc_khz().unwrap());
        assert!(a.abs_diff(b) * 100 < a, "{a} vs {b} kHz");
    }
}
