//! How a checker reaches what hosts point it at (agents' challenge endpoints, services'
//! published endpoints) without being turned against its own machine or network.
//!
//! A host chooses those URLs, so on a public network the checker goes only to globally
//! routable addresses ([`gpumesh_types::net::is_public`]): an IP literal is judged as the
//! URL parser reads it (`127.1`, `0x7f.0.0.1` and `[::ffff:127.0.0.1]` are loopback), and
//! a name is resolved at each connection by [`PublicResolver`], which keeps only public
//! addresses, so a name that resolves somewhere private (at registration or later, DNS
//! rebinding) reaches nothing. The client follows no redirect (an agent answers itself or
//! not at all; a redirect could name any address), uses no proxy (round trips are
//! measured directly, and a proxy would resolve names where the checker cannot judge
//! them), and answers are read only up to a bound.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;

use crate::ProbeError;

/// The client every probe goes through. On a local network (`local`), agents listen on
/// this machine's own addresses, so no address is refused.
pub(crate) fn client(
    indexer_ca: &[gpumesh_client::Certificate],
    local: bool,
) -> reqwest::Result<reqwest::Client> {
    // Canary tasks point at the indexer, which may serve a certificate of the operator's
    // own CA.
    let builder = gpumesh_client::http_builder()
        .tls_certs_merge(indexer_ca.iter().cloned())
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(120));
    if local {
        builder.build()
    } else {
        builder.dns_resolver(PublicResolver).build()
    }
}

/// The URL to probe, if it may be probed: http(s), no user information, and on a public
/// network no IP literal that is not public. Names pass here; the client's resolver
/// judges the addresses they resolve to.
pub(crate) fn url(raw: &str, local: bool) -> Option<reqwest::Url> {
    let url = reqwest::Url::parse(raw).ok()?;
    if !matches!(url.scheme(), "http" | "https")
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return None;
    }
    let allowed = match url.host()? {
        url::Host::Domain(_) => true,
        _ if local => true,
        url::Host::Ipv4(ip) => gpumesh_types::net::is_public(ip.into()),
        url::Host::Ipv6(ip) => gpumesh_types::net::is_public(ip.into()),
    };
    allowed.then_some(url)
}

/// The body of `response`, or `Refused` once it is longer than `limit` bytes: a declared
/// length over the limit is refused before reading, and a streamed body is read no
/// further than the limit.
pub(crate) async fn body(response: reqwest::Response, limit: usize) -> Result<Vec<u8>, ProbeError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(ProbeError::Refused);
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(ProbeError::from)?;
        if body.len() + chunk.len() > limit {
            return Err(ProbeError::Refused);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Resolves names as the system does, then keeps only the public addresses; a name with
/// none is an error, so nothing is connected to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PublicResolver;

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let name = name.as_str().to_owned();
        Box::pin(async move {
            let public: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|a| gpumesh_types::net::is_public(a.ip()))
                .collect();
            if public.is_empty() {
                return Err(format!("{name} resolves to no public address").into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use reqwest::dns::Resolve;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn urls_a_checker_may_probe() {
        // (url, on a public network, on a local network)
        let cases: &[(&str, bool, bool)] = &[
            ("http://8.8.8.8:7701/liveness", true, true),
            ("https://agent.example.org/proof/open", true, true),
            ("http://[2606:4700:4700::1111]/liveness", true, true),
            // Names pass; their addresses are judged by the resolver.
            ("http://localhost:7701/liveness", true, true),
            ("http://127.0.0.1:7701/liveness", false, true),
            ("http://127.1:9/liveness", false, true),
            ("http://0x7f.0.0.1:9/liveness", false, true),
            ("http://0177.0.0.1:9/liveness", false, true),
            ("http://2130706433:9/liveness", false, true),
            ("http://[::1]:9/liveness", false, true),
            ("http://[::ffff:127.0.0.1]:9/liveness", false, true),
            ("http://[0:0:0:0:0:ffff:7f00:1]:9/liveness", false, true),
            ("http://169.254.169.254/latest", false, true),
            ("http://10.0.0.1/liveness", false, true),
            ("http://[fd00::1]/liveness", false, true),
            ("http://x@8.8.8.8:9/liveness", false, false),
            ("http://x:y@agent.example.org/liveness", false, false),
            ("ftp://8.8.8.8/liveness", false, false),
            ("file:///etc/passwd", false, false),
            ("not a url", false, false),
        ];
        for &(raw, public, local) in cases {
            assert_eq!(
                url(raw, false).is_some(),
                public,
                "{raw} on a public network"
            );
            assert_eq!(url(raw, true).is_some(), local, "{raw} on a local network");
        }
    }

    #[tokio::test]
    async fn the_resolver_keeps_only_public_addresses() {
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let err = match PublicResolver.resolve(name).await {
            Ok(addrs) => panic!("localhost resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("no public address"), "{err}");
    }

    /// A server that answers every request with `response` and counts connections.
    async fn server(response: Vec<u8>) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let response = response.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = socket.write_all(&response).await;
                });
            }
        });
        (address, connections)
    }

    #[tokio::test]
    async fn a_public_network_probe_does_not_reach_a_name_that_resolves_to_loopback() {
        let (address, connections) =
            server(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_vec()).await;
        let public = client(&[], false).unwrap();
        let raw = format!("http://localhost:{}/liveness", address.port());
        let err = public
            .post(url(&raw, false).unwrap())
            .send()
            .await
            .unwrap_err();
        assert!(
            err.is_connect() || err.to_string().contains("dns"),
            "{err:?}"
        );
        assert_eq!(connections.load(Ordering::SeqCst), 0);
        // The same probe on a local network connects.
        let local = client(&[], true).unwrap();
        let response = local.post(url(&raw, true).unwrap()).send().await.unwrap();
        assert!(response.status().is_success());
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let (target, reached) =
            server(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec()).await;
        let redirect = format!(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://{target}/\r\ncontent-length: 0\r\n\r\n"
        );
        let (agent, _) = server(redirect.into_bytes()).await;
        let response = client(&[], true)
            .unwrap()
            .post(format!("http://{agent}/liveness"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 307);
        assert_eq!(
            reached.load(Ordering::SeqCst),
            0,
            "the redirect was followed"
        );
    }

    #[tokio::test]
    async fn answers_are_read_only_up_to_the_limit() {
        let http = client(&[], true).unwrap();
        // A declared length over the limit: refused before reading.
        let (declared, _) =
            server(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000000\r\n\r\n{".to_vec()).await;
        let response = http
            .get(format!("http://{declared}/"))
            .send()
            .await
            .unwrap();
        assert!(matches!(
            body(response, 1024).await,
            Err(ProbeError::Refused)
        ));
        // A chunked body longer than the limit: reading stops at it.
        let mut endless = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..64 {
            endless.extend_from_slice(b"400\r\n");
            endless.extend_from_slice(&[b' '; 1024]);
            endless.extend_from_slice(b"\r\n");
        }
        let (chunked, _) = server(endless).await;
        let response = http.get(format!("http://{chunked}/")).send().await.unwrap();
        assert!(matches!(
            body(response, 4096).await,
            Err(ProbeError::Refused)
        ));
        // Within the limit: the whole body.
        let (small, _) = server(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_vec()).await;
        let response = http.get(format!("http://{small}/")).send().await.unwrap();
        assert_eq!(body(response, 2).await.unwrap(), b"{}");
    }
}
