//! `ya-runtime-vm offer-template` through the binary: exactly one JSON document on stdout,
//! describing this host's CPU.

#[test]
fn prints_one_json_document_about_this_host() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ya-runtime-vm"))
        .arg("offer-template")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.matches('\n').count(), 1, "{text}");
    assert!(text.ends_with("}\n"));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let vendor = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("vendor_id"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap()
        .trim();
    let p = &v["properties"];
    assert_eq!(p["golem.inf.cpu.vendor"], vendor);
    assert!(p["golem.inf.cpu.model"]
        .as_str()
        .unwrap()
        .starts_with("Stepping "));
    assert!(!p["golem.inf.cpu.capabilities"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(
        p["golem.runtime.capabilities"],
        serde_json::json!(["start-entrypoint", "vpn", "inet", "manifest-support"])
    );
    assert_eq!(v["constraints"], "");
}
