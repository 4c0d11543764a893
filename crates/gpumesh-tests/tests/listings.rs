//! Listings come in pages with a cursor; following `next` gives every item once, in order.

use std::time::Duration;

use gpumesh_devnet::RuntimeChoice;
use gpumesh_tests::{devnet, job};
use gpumesh_types::{ContainerView, GpuModel, LeaseView, Page};
use serde::de::DeserializeOwned;

async fn pages<T: DeserializeOwned>(http: &reqwest::Client, url: &str) -> Vec<Vec<T>> {
    let mut pages = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let cursor = next.map(|c| format!("&after={c}")).unwrap_or_default();
        let response = http.get(format!("{url}{cursor}")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let page: Page<T> = response.json().await.unwrap();
        pages.push(page.items);
        match page.next {
            Some(n) => next = Some(n),
            None => return pages,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_are_paginated_and_the_client_follows_the_cursor() {
    let net = devnet(3, RuntimeChoice::Process).await;
    let http = gpumesh_client::http();
    let base = &net.api_url;
    let client = net.buyer_client();

    let all = client.containers().await.unwrap();
    assert!(all.len() > 3, "{} containers", all.len());
    let paged: Vec<Vec<ContainerView>> =
        pages(&http, &format!("{base}/v1/containers?limit=3")).await;
    assert_eq!(paged.len(), all.len().div_ceil(3));
    assert!(paged.iter().all(|p| p.len() <= 3));
    assert_eq!(paged.concat(), all, "every container once, in order");

    let buyer = net.buyer.address();
    let mut ids = Vec::new();
    for _ in 0..5 {
        let lease = client
            .submit_job(&job(GpuModel::H100, 1, "true", Duration::from_secs(30)))
            .await
            .unwrap();
        client.cancel(lease.id).await.unwrap();
        ids.push(lease.id);
    }
    let paged: Vec<Vec<LeaseView>> =
        pages(&http, &format!("{base}/v1/leases?buyer={buyer}&limit=2")).await;
    assert_eq!(paged.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    let listed: Vec<_> = paged.concat().iter().map(|l| l.id).collect();
    assert_eq!(listed, ids);
    let followed: Vec<_> = client
        .leases_of_buyer(buyer)
        .await
        .unwrap()
        .iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(followed, ids);

    for bad in ["limit=0", "limit=100000", "after=soon"] {
        let response = http
            .get(format!("{base}/v1/leases?{bad}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad}");
    }
    net.stop().await.unwrap();
}
