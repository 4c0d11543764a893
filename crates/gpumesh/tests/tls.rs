//! HTTPS end to end: an indexer serving a certificate that a test CA signed, reached by
//! the command-line client and by a host agent that trust that CA (`--ca-cert`), and
//! refused by a client that does not.

mod common;

use common::Killed;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Writes a CA, and a certificate for localhost and 127.0.0.1 that it signed, as PEM files:
/// (ca.pem, cert.pem, key.pem).
fn test_pki(dir: &Path) -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = server.signed_by(&key, &issuer).unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_str().unwrap().to_string()
    };
    (
        write("ca.pem", ca_cert.pem()),
        write("cert.pem", cert.pem()),
        write("key.pem", key.serialize_pem()),
    )
}

fn gpumesh(url: &str, ca: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(common::BIN);
    cmd.args(args)
        .env("GPUMESH_INDEXER", url)
        .env("GPUMESH_PASSWORD", common::PASSWORD)
        .env_remove("GPUMESH_KEY");
    match ca {
        Some(ca) => cmd.env("GPUMESH_CA_CERT", ca),
        None => cmd.env_remove("GPUMESH_CA_CERT"),
    };
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(url: &str, ca: &str, args: &[&str]) -> String {
    let (success, out, err) = gpumesh(url, Some(ca), args);
    assert!(success, "gpumesh {args:?} failed: {err}");
    out
}

#[test]
fn the_client_and_a_host_agent_reach_an_https_indexer_that_trusts_their_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(dir.path());
    let data = dir.path().join("net");
    let (indexer, url) = common::start_with(&[
        "--local",
        "--data",
        data.to_str().unwrap(),
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    let _indexer = Killed(indexer);
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    // A client that does not trust the CA is refused, and plain HTTP gets no answer.
    let (success, _, err) = gpumesh(&url, None, &["containers", "--json"]);
    assert!(!success, "a client without the CA must not connect");
    assert!(err.contains("invalid peer certificate"), "{err}");
    let plain = url.replace("https://", "http://");
    let (success, _, err) = gpumesh(&plain, Some(&ca), &["containers", "--json"]);
    assert!(
        !success && err.contains("invalid HTTP version"),
        "plain HTTP to the HTTPS port: {err}"
    );
    // A CA file that is not one is refused with a message, not a crash.
    let bad = dir.path().join("bad.pem");
    std::fs::write(
        &bad,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let (success, _, err) = gpumesh(&url, Some(bad.to_str().unwrap()), &["containers", "--json"]);
    assert!(!success && err.contains("does not parse"), "{err}");

    // Signed requests over HTTPS: keys, the faucet.
    let (host_key, buyer_key) = (dir.path().join("host.key"), dir.path().join("buyer.key"));
    for key in [&host_key, &buyer_key] {
        ok(
            &url,
            &ca,
            &[
                "wallet",
                "new",
                "--kdf",
                "light",
                "--out",
                key.to_str().unwrap(),
            ],
        );
        ok(
            &url,
            &ca,
            &[
                "wallet",
                "faucet",
                "--key",
                key.to_str().unwrap(),
                "--amount",
                "1000",
            ],
        );
    }
    let host = ok(
        &url,
        &ca,
        &["wallet", "address", "--key", host_key.to_str().unwrap()],
    );

    // A host agent (a local network's process runtime and simulated GPU) registers,
    // heartbeats and takes a job, all over HTTPS.
    let agent = Command::new(common::BIN)
        .args([
            "host",
            "--indexer",
            &url,
            "--ca-cert",
            &ca,
            "--key",
            host_key.to_str().unwrap(),
            "--name",
            "tls-host",
            "--location",
            "52.37,4.90",
            "--country",
            "NL",
            "--price",
            "2",
            "--simulate-gpu",
            "H100:1",
            "--runtime",
            "process",
            "--dev",
        ])
        .env("GPUMESH_PASSWORD", common::PASSWORD)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _agent = Killed(agent);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed: serde_json::Value =
            serde_json::from_str(&ok(&url, &ca, &["containers", "--json"])).unwrap();
        let standby = listed.as_array().unwrap().iter().any(|c| {
            c["host"]
                .as_str()
                .unwrap()
                .eq_ignore_ascii_case(host.trim())
                && c["state"] == "standby"
        });
        if standby {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the host never came to standby: {listed}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = ok(
        &url,
        &ca,
        &[
            "run",
            "--key",
            buyer_key.to_str().unwrap(),
            "--gpu",
            "H100",
            "--near",
            "52.37,4.90",
            "--max-price",
            "3",
            "--max-duration",
            "1m",
            "--",
            "sh",
            "-c",
            "echo over tls",
        ],
    );
    assert!(out.contains("over tls"), "{out}");
}
