//! Delivery checks: is a lease in progress being delivered? A service is probed at its
//! published endpoint from the checker's side (its HTTP health check, or a TCP
//! connection), with the round trip measured from here; a batch job's agent is asked for
//! a statement, signed by the host for the checker's fresh nonce, that the lease's
//! workload is running. The first is what the buyer's users see, from outside the host,
//! at the address the host must serve from; the second is only the host's word, but a
//! fresh, signed one: it proves the agent is there and answering for that lease, and a
//! job whose agent says it is not running is ended and refunded.

use std::time::{Duration, Instant};

use alloy_primitives::B256;
use gpumesh_types::{
    CheckOutcome, CheckTask, DeliveryAnswer, DeliveryChallenge, FailReason, delivery_message,
};
use rand::RngCore;

use crate::{Checker, failed};

impl Checker {
    pub(crate) async fn delivery(&self, task: &CheckTask, timeout: Duration) -> CheckOutcome {
        let Some(probe) = &task.delivery else {
            return failed(FailReason::NotDelivered);
        };
        match &probe.service {
            Some(service) => self.service(service, timeout).await,
            None => self.statement(task, probe.lease, timeout).await,
        }
    }

    /// The service answers its health check by the check's own rule (2xx or 3xx; a
    /// redirect is not followed), or accepts a TCP connection, within `timeout`. The
    /// endpoint is on the host's own address (the registry refuses others outside a
    /// local network), so the answer is the service's.
    async fn service(&self, service: &str, timeout: Duration) -> CheckOutcome {
        let began = Instant::now();
        let answered = if let Some(address) = service.strip_prefix("tcp://") {
            self.connect(address, timeout).await
        } else {
            // An IP literal is judged here; a name, by the client's resolver.
            match crate::probe::url(service, self.local) {
                Some(url) => match self.http.get(url).timeout(timeout).send().await {
                    Ok(r) => r.status().is_success() || r.status().is_redirection(),
                    Err(_) => false,
                },
                None => false,
            }
        };
        if answered {
            CheckOutcome::Up {
                rtt_us: began.elapsed().as_micros() as u64,
            }
        } else {
            failed(FailReason::NotDelivered)
        }
    }

    /// A TCP connection to `host:port`, only to addresses this checker may probe.
    async fn connect(&self, address: &str, timeout: Duration) -> bool {
        let attempt = async {
            let addrs = tokio::net::lookup_host(address).await.ok()?;
            for addr in addrs.filter(|a| self.may_probe(a.ip())) {
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    return Some(());
                }
            }
            None
        };
        matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(())))
    }

    /// Whether this checker may connect to `ip`: any address on a local network, only
    /// globally routable ones elsewhere (a host must not aim checkers at private hosts).
    fn may_probe(&self, ip: std::net::IpAddr) -> bool {
        self.local || gpumesh_types::net::is_public(ip)
    }

    /// The agent states, signed by the host for this checker's fresh nonce, whether the
    /// lease's workload runs. No answer is a failure like any other: the lease is not
    /// seen delivered.
    async fn statement(
        &self,
        task: &CheckTask,
        lease: gpumesh_types::LeaseId,
        timeout: Duration,
    ) -> CheckOutcome {
        let mut nonce = B256::ZERO;
        rand::thread_rng().fill_bytes(&mut nonce.0);
        let challenge = DeliveryChallenge {
            checker: self.config.wallet.address(),
            lease,
            nonce,
        };
        let began = Instant::now();
        let answer: DeliveryAnswer = match self.post(task, "delivery", &challenge, timeout).await {
            Ok(a) => a,
            Err(_) => return failed(FailReason::Unreachable),
        };
        let rtt_us = began.elapsed().as_micros() as u64;
        let message = delivery_message(self.chain_id, &challenge, answer.running);
        match answer.signature.0.recover_address_from_msg(message) {
            Ok(signer) if signer != task.container.host => failed(FailReason::BadSignature),
            Ok(_) if answer.running => CheckOutcome::Up { rtt_us },
            Ok(_) => failed(FailReason::NotDelivered),
            Err(_) => failed(FailReason::BadSignature),
        }
    }
}
