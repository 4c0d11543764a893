//! `/openapi.json` describes every route the indexer serves, and validates as OpenAPI 3.
//!
//! Every route is registered with its description in one place (`api::documented`), so
//! the document cannot miss one that is registered there; this test makes sure that no
//! route is registered anywhere else, that every documented route is served, and that
//! the document is valid (with `openapi-spec-validator` from PyPI where CI installs it).

use std::process::Command;

use gpumesh_devnet::RuntimeChoice;
use gpumesh_tests::devnet;

const API_SOURCE: &str = include_str!("../../gpumesh-indexer/src/api.rs");

#[test]
fn no_route_bypasses_the_document() {
    // The one router merged in whole is the reference (Swagger UI and the document).
    assert_eq!(API_SOURCE.matches(".merge(").count(), 1);
    assert!(API_SOURCE.contains("api.merge(reference)"));
    for (n, line) in API_SOURCE.lines().enumerate() {
        let code = line.trim_start();
        assert!(
            code.starts_with("//") || !(code.contains(".route(") || code.contains(".nest(")),
            "api.rs:{}: register routes with `.routes(routes!(…))` and a #[utoipa::path], so the OpenAPI document lists them: {line}",
            n + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_lists_every_route_and_each_is_served() {
    let net = devnet(1, RuntimeChoice::Process).await;
    let http = gpumesh_client::http();
    let served: serde_json::Value = http
        .get(format!("{}/openapi.json", net.api_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let document = serde_json::to_value(gpumesh_indexer::openapi()).unwrap();
    assert_eq!(served, document);
    assert!(served["openapi"].as_str().unwrap().starts_with("3."));

    let paths = served["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        let concrete = path
            .replace("{id}", "1")
            .replace("{seq}", "0")
            .replace("{token}", "nothing")
            .replace("{address}", "0x0000000000000000000000000000000000000001");
        for method in item.as_object().unwrap().keys() {
            operations += 1;
            let method: reqwest::Method = method.to_uppercase().parse().unwrap();
            let url = format!("{}{concrete}", net.api_url);
            let response = http.request(method.clone(), url).send().await.unwrap();
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            // Served: whatever it answers (unsigned requests are refused), it is not the
            // router's "no such route" or "wrong method".
            assert!(
                !body.contains("no such API route") && status != 405,
                "{method} {path}: {status} {body}"
            );
            assert!(item[method.as_str().to_lowercase()]["responses"].is_object());
        }
    }
    assert!(operations >= 35, "{operations} operations");
    // The reference page is served offline, from the binary.
    let page = http
        .get(format!("{}/api/", net.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(
        !html.contains("https://"),
        "no asset from elsewhere: {html}"
    );

    let file = std::env::temp_dir().join(format!("gpumesh-openapi-{}.json", std::process::id()));
    std::fs::write(&file, serde_json::to_vec_pretty(&served).unwrap()).unwrap();
    let python = std::env::var("GPUMESH_OPENAPI_PYTHON").unwrap_or_else(|_| "python3".into());
    let validated = Command::new(&python)
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output();
    match validated {
        Ok(out) if out.status.success() => {}
        Ok(out)
            if std::env::var("GPUMESH_OPENAPI_PYTHON").is_ok()
                || String::from_utf8_lossy(&out.stderr).contains("Validation Error") =>
        {
            panic!(
                "openapi-spec-validator refused the document:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        }
        _ => eprintln!(
            "skipping validation: no openapi-spec-validator for {python}; GPUMESH_OPENAPI_PYTHON names one that has it"
        ),
    }
    let _ = std::fs::remove_file(&file);
    net.stop().await.unwrap();
}
