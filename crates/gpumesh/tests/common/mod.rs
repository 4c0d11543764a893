//! Shared by the tests that run the `gpumesh` binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_gpumesh");

/// Starts an indexer on `data` and returns it with its API address.
pub fn start(data: &Path) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(["indexer", "--local", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the gpumesh binary starts");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("the indexer says where it serves before it exits")
            .unwrap();
        if let Some(rest) = line.split("indexer serving ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep draining stderr so that the indexer never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, url)
}
