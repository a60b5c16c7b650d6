//! `offer-template`: the properties the provider agent merges into its offer for this runtime —
//! the host CPU (read from `/proc/cpuinfo`) and the runtime capabilities that work. Printed as
//! exactly one JSON document on stdout.

use serde_json::{json, Value};

/// Runtime capabilities this build really provides: `start-entrypoint`; `vpn` and `inet` (the
/// exe-unit's endpoints and `CreateNetwork`); `manifest-support`, which asks nothing more of the
/// runtime (the exe-unit enforces a payload manifest's URL whitelist on the INET traffic it
/// proxies). `gpu` is added here when it lands.
pub const RUNTIME_CAPABILITIES: &[&str] = &["start-entrypoint", "vpn", "inet", "manifest-support"];

/// What the offer says about the host CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuInfo {
    /// `GenuineIntel`, `AuthenticAMD`, ….
    pub vendor: String,
    /// The brand string (`model name`).
    pub brand: String,
    /// `Stepping S Family F Model M`, the form requestors filter on.
    pub model: String,
    /// Feature flags, sorted.
    pub capabilities: Vec<String>,
}

/// Reads the first processor's entry of a `/proc/cpuinfo` text; `None` without a vendor.
pub fn parse_cpuinfo(text: &str) -> Option<CpuInfo> {
    let first = text.split("\n\n").next()?;
    let field = |key: &str| {
        first.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    };
    let vendor = field("vendor_id").filter(|v| !v.is_empty())?;
    let num = |key: &str| field(key).unwrap_or_else(|| "0".into());
    let mut capabilities: Vec<String> = field("flags")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    // Linux calls SSE3 "pni"; requestors ask for "sse3".
    if capabilities.iter().any(|f| f == "pni") {
        capabilities.push("sse3".into());
    }
    capabilities.sort();
    capabilities.dedup();
    Some(CpuInfo {
        vendor,
        brand: field("model name").unwrap_or_default(),
        model: format!(
            "Stepping {} Family {} Model {}",
            num("stepping"),
            num("cpu family"),
            num("model")
        ),
        capabilities,
    })
}

/// The offer template for `cpu`.
pub fn template(cpu: &CpuInfo) -> Value {
    json!({
        "properties": {
            "golem.inf.cpu.vendor": cpu.vendor,
            "golem.inf.cpu.brand": cpu.brand,
            "golem.inf.cpu.model": cpu.model,
            "golem.inf.cpu.capabilities": cpu.capabilities,
            "golem.runtime.capabilities": RUNTIME_CAPABILITIES,
        },
        "constraints": "",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEL: &str =
        "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 158\n\
        model name\t: Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz\nstepping\t: 10\n\
        flags\t\t: fpu vme pni avx2 sse4_1 avx2\n\nprocessor\t: 1\nvendor_id\t: Other\n";

    #[test]
    fn reads_the_first_processor() {
        let cpu = parse_cpuinfo(INTEL).unwrap();
        assert_eq!(cpu.vendor, "GenuineIntel");
        assert_eq!(cpu.brand, "Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz");
        assert_eq!(cpu.model, "Stepping 10 Family 6 Model 158");
        assert_eq!(
            cpu.capabilities,
            ["avx2", "fpu", "pni", "sse3", "sse4_1", "vme"]
        );
    }

    #[test]
    fn no_vendor_no_cpu() {
        assert_eq!(parse_cpuinfo(""), None);
        assert_eq!(parse_cpuinfo("processor\t: 0\nvendor_id\t:\n"), None);
    }

    #[test]
    fn template_shape() {
        let t = template(&parse_cpuinfo(INTEL).unwrap());
        assert_eq!(t["constraints"], "");
        let p = &t["properties"];
        assert_eq!(p["golem.inf.cpu.vendor"], "GenuineIntel");
        assert_eq!(
            p["golem.runtime.capabilities"],
            json!(["start-entrypoint", "vpn", "inet", "manifest-support"])
        );
        assert_eq!(p["golem.inf.cpu.capabilities"][0], "avx2");
    }
}
