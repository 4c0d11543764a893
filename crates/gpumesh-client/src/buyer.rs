//! A buyer's job from request to receipt: submit, fund the escrow, follow the output, and
//! collect the final lease with its settlement. Shared by `gpumesh run`, devnet's demo and
//! the integration tests.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use gpumesh_types::{
    ErrorCode, JobRequest, LeaseState, LeaseView, LogEntry, LogEvent, LogStream, ServiceHealth,
};

use crate::{Client, ClientError};

/// What happens as a job runs.
#[derive(Debug)]
pub enum JobEvent<'a> {
    /// Capacity was reserved; the escrow is about to be funded.
    Matched(&'a LeaseView),
    /// The escrow is open.
    Funded(&'a LeaseView),
    /// Output from the workload (or a note from the host about it).
    Output(&'a LogEntry),
    /// The connection to the indexer dropped; following again from where it left off.
    Reconnecting(&'a ClientError),
}

/// How a job ended.
#[derive(Debug)]
pub enum JobOutcome {
    /// No host could take the job; the indexer's explanation.
    Unmatched { reason: String },
    /// The lease ended; `lease` is final, with its settlement.
    Ended {
        lease: Box<LeaseView>,
        /// From sending the request to the workload's first own output.
        first_output: Option<Duration>,
        total: Duration,
    },
}

/// How a detached start ended.
#[derive(Debug)]
pub enum ServiceOutcome {
    Unmatched {
        reason: String,
    },
    /// Running, and ready when it has a health check; `ready` counts from the request.
    Ready {
        lease: Box<LeaseView>,
        ready: Duration,
    },
    /// It ended or became unhealthy before it was ready.
    NotReady {
        lease: Box<LeaseView>,
    },
}

/// Submits a job and funds its escrow: the funded lease, or why nothing matched.
async fn submit_and_fund(
    client: &Client,
    job: &JobRequest,
    on_event: &mut impl FnMut(JobEvent<'_>),
) -> Result<Result<LeaseView, String>, ClientError> {
    let lease = match client.submit_job(job).await {
        Ok(lease) => lease,
        Err(ClientError::Api { error, .. }) if error.code == ErrorCode::NoMatch => {
            return Ok(Err(error.message));
        }
        Err(e) => return Err(e),
    };
    on_event(JobEvent::Matched(&lease));
    if let Err(e) = client.fund(&lease).await {
        // Give the GPUs back at once rather than holding them for the match's lifetime.
        // Should the escrow have opened after all (an answer lost on the way), the
        // cancellation ends the lease unstarted and refunds it in full.
        // The funding error is the one to report; if the cancellation fails too, the
        // match still ends at its time-to-live.
        let _ = client.cancel(lease.id).await;
        return Err(e);
    }
    on_event(JobEvent::Funded(&lease));
    Ok(Ok(lease))
}

/// How often a detached start looks at its lease.
const READY_POLL: Duration = Duration::from_millis(100);

/// Submits and funds a job, then waits until its workload runs and, when it has a health
/// check, passes it (`gpumesh run --detach`). The lease runs on after this returns.
pub async fn start_service(
    client: &Client,
    job: &JobRequest,
    mut on_event: impl FnMut(JobEvent<'_>),
) -> Result<ServiceOutcome, ClientError> {
    let began = Instant::now();
    let lease = match submit_and_fund(client, job, &mut on_event).await? {
        Ok(lease) => lease,
        Err(reason) => return Ok(ServiceOutcome::Unmatched { reason }),
    };
    let mut failures = 0;
    loop {
        match client.lease(lease.id).await {
            Ok(view) => {
                failures = 0;
                if view.state.is_terminal() || view.health == Some(ServiceHealth::Unhealthy) {
                    return Ok(ServiceOutcome::NotReady {
                        lease: Box::new(view),
                    });
                }
                let ready = view.state == LeaseState::Running
                    && view.health.is_none_or(|h| h == ServiceHealth::Ready);
                if ready {
                    return Ok(ServiceOutcome::Ready {
                        lease: Box::new(view),
                        ready: began.elapsed(),
                    });
                }
            }
            Err(e @ ClientError::Unreachable { .. }) if failures < 60 => {
                failures += 1;
                on_event(JobEvent::Reconnecting(&e));
            }
            Err(e) => return Err(e),
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// Runs a job to its end.
pub async fn run_job(
    client: &Client,
    job: &JobRequest,
    mut on_event: impl FnMut(JobEvent<'_>),
) -> Result<JobOutcome, ClientError> {
    let began = Instant::now();
    let lease = match submit_and_fund(client, job, &mut on_event).await? {
        Ok(lease) => lease,
        Err(reason) => return Ok(JobOutcome::Unmatched { reason }),
    };
    let mut first_output = None;
    let mut next_seq = 0;
    let mut failures = 0;
    loop {
        let mut events = match client.logs(lease.id, next_seq, true).await {
            Ok(events) => Box::pin(events),
            Err(e @ ClientError::Unreachable { .. }) if failures < 60 => {
                failures += 1;
                on_event(JobEvent::Reconnecting(&e));
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        while let Some(event) = events.next().await {
            match event {
                Ok(LogEvent::Log(entry)) => {
                    if first_output.is_none() && entry.stream != LogStream::System {
                        first_output = Some(began.elapsed());
                    }
                    next_seq = entry.seq + 1;
                    failures = 0;
                    on_event(JobEvent::Output(&entry));
                }
                Ok(LogEvent::End { lease }) => {
                    return Ok(JobOutcome::Ended {
                        lease,
                        first_output,
                        total: began.elapsed(),
                    });
                }
                Err(e) => {
                    on_event(JobEvent::Reconnecting(&e));
                    break;
                }
            }
        }
        // The stream ended without an end event: the indexer went away. Follow again.
        failures += 1;
        if failures > 60 {
            return Err(ClientError::Protocol {
                url: client.base_url().to_string(),
                reason: format!(
                    "lost the output of lease {} and could not follow it again",
                    lease.id
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
