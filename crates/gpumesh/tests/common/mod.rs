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

/// A child process killed (and reaped) when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A new key saved as `DIR/NAME.key` under [`PASSWORD`], and its path.
pub fn key(dir: &Path, name: &str) -> (gpumesh_identity::Wallet, String) {
    let wallet = gpumesh_identity::Wallet::generate();
    let path = dir.join(format!("{name}.key"));
    wallet
        .save(&path, PASSWORD, gpumesh_identity::Kdf::Light)
        .unwrap();
    (wallet, path.to_str().unwrap().to_string())
}

/// Writes `genesis` with `params` to `DIR/genesis.json` and starts an indexer on it
/// (data in `DIR/data`), with the protocol key at `protocol_key`.
pub fn start_network(
    dir: &Path,
    genesis: gpumesh_ledger::Genesis,
    params: gpumesh_registry::Params,
    protocol_key: &str,
) -> (Killed, String) {
    let genesis_path = dir.join("genesis.json");
    gpumesh_indexer::GenesisFile { genesis, params }
        .create(&genesis_path)
        .unwrap();
    let data = dir.join("data");
    let (indexer, url) = start_with(&[
        "--genesis",
        genesis_path.to_str().unwrap(),
        "--protocol-key",
        protocol_key,
        "--data",
        data.to_str().unwrap(),
    ]);
    (Killed(indexer), url)
}

/// `gpumesh host` for `url` with `key`, named `name`, in Amsterdam; `rest` gives the
/// price, the GPUs, the runtime and anything else.
pub fn host_command(url: &str, key: &str, name: &str, rest: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["host", "--indexer", url, "--key", key, "--name", name])
        .args(["--location", "52.37,4.90", "--country", "NL"])
        .args(rest)
        .env("GPUMESH_PASSWORD", PASSWORD);
    command
}
