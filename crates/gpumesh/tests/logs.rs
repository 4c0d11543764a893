//! `--log-format json`: one JSON object per line, each request's lines carrying its
//! request id, which the response returns.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn json_logs_carry_the_request_id_the_response_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut indexer = Command::new(common::BIN)
        .args(["--log-format", "json", "--verbose", "indexer", "--local"])
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, logged) = mpsc::channel();
    let stderr = indexer.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let next = || logged.recv_timeout(Duration::from_secs(20)).unwrap();
    let url = loop {
        let line = next();
        if let Some(rest) = line.split("indexer serving ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let response = runtime.block_on(async {
        gpumesh_client::http()
            .get(format!("{url}/v1/info"))
            .header("x-request-id", "probe-42")
            .send()
            .await
            .unwrap()
    });
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "probe-42");
    // Every log line is a JSON object; the request's carries its id and path.
    let request_line = loop {
        let line = next();
        if line.starts_with("indexer serving") {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if value["span"]["request_id"] == "probe-42" {
            break value;
        }
    };
    assert_eq!(request_line["span"]["path"], "/v1/info");
    assert_eq!(request_line["level"], "INFO");
    indexer.kill().unwrap();
    indexer.wait().unwrap();
}
