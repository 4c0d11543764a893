//! Shared by the tests that run the `gpumesh` binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_gpumesh");

/// The password of the keys these tests make, given as `GPUMESH_PASSWORD`.
pub const PASSWORD: &str = "correct horse battery staple";

/// Starts a local network's indexer on `data` and returns it with its API address.
pub fn start(data: &Path) -> (Child, String) {
    let data = data.to_str().unwrap();
    start_with(&["--local", "--data", data])
}

/// Starts `gpumesh indexer ARGS` on a free port and returns it with its API address.
pub fn start_with(args: &[&str]) -> (Child, String) {
    let (child, url, _) = start_logged(args);
    (child, url)
}

/// [`start_with`], also returning what the indexer logged before it served.
pub fn start_logged(args: &[&str]) -> (Child, String, Vec<String>) {
    let mut child = Command::new(BIN)
        .args(["indexer", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("GPUMESH_PASSWORD", PASSWORD)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the gpumesh binary starts");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut before = Vec::new();
    let url = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| {
                panic!(
                    "the indexer exited before it served; it said:\n{}",
                    before.join("\n")
                )
            })
            .unwrap();
        if let Some(rest) = line.split("indexer serving ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
        before.push(line);
    };
    // Keep draining stderr so that the indexer never blocks on a full pipe, passing it on
    // to this test's output (shown when the test fails: why an indexer stopped early).
    std::thread::spawn(move || {
        for line in lines {
            eprintln!("indexer: {}", line.unwrap_or_default());
        }
    });
    (child, url, before)
}
