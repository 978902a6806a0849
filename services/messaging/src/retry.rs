//! What happens to a message whose handling failed: a pure decision, no I/O.
//!
//! Transient failures wait in a tier of delay queues (`<queue>.retry.<n>`, each with a fixed
//! message TTL that dead-letters back to `<queue>`), so a waiting message never blocks the ones
//! behind it; the attempt count travels in a header. Permanent failures, undecodable messages
//! and exhausted retries go to the dead-letter queue with the reason.

use std::time::Duration;

use crate::events::DecodeError;

/// Header carrying how many handling attempts of this message have failed so far.
pub const ATTEMPTS_HEADER: &str = "x-warren-attempts";
/// Header carrying the exchange the message was first published to.
pub const ORIGINAL_EXCHANGE_HEADER: &str = "x-warren-original-exchange";
/// Header carrying the routing key the message was first published with.
pub const ORIGINAL_ROUTING_KEY_HEADER: &str = "x-warren-original-routing-key";
/// Header carrying the last error text.
pub const ERROR_HEADER: &str = "x-warren-error";
/// Header carrying why the message was dead-lettered, as a stable label.
pub const REASON_HEADER: &str = "x-warren-reason";
/// Header carrying the queue the message was consumed from.
pub const QUEUE_HEADER: &str = "x-warren-queue";
/// Header carrying when the message was dead-lettered (RFC 3339).
pub const DEAD_LETTERED_AT_HEADER: &str = "x-warren-dead-lettered-at";

/// A failed attempt to handle an event, as the handler classifies it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Might succeed later (a timeout, a lock, a dependency down): retry with backoff.
    #[error("transient: {0}")]
    Transient(String),
    /// Will never succeed (a business rule, a reference to nothing): dead-letter now.
    #[error("permanent: {0}")]
    Permanent(String),
    /// Lost a race with another transaction (a deadlock, a serialization failure, a lock wait
    /// past its bound). In a batch that is the batch's doing, not the event's: the consumer runs
    /// each event again in a transaction of its own without spending an attempt. Alone, it is
    /// retried as [`HandlerError::Transient`].
    #[error("contention: {0}")]
    Contention(String),
}

impl HandlerError {
    /// A transient error with `msg`.
    pub fn transient(msg: impl std::fmt::Display) -> Self {
        HandlerError::Transient(msg.to_string())
    }

    /// A permanent error with `msg`.
    pub fn permanent(msg: impl std::fmt::Display) -> Self {
        HandlerError::Permanent(msg.to_string())
    }
}

/// SQLSTATEs of a transaction that lost a race: deadlock detected, serialization failure,
/// lock not available (a `lock_timeout`).
const CONTENTION_CODES: [&str; 3] = ["40P01", "40001", "55P03"];

impl From<sqlx::Error> for HandlerError {
    /// Integrity violations will fail the same way every time; a lost race is contention;
    /// everything else (connection loss, timeouts) may pass on a later attempt.
    fn from(err: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &err
            && db
                .code()
                .is_some_and(|code| CONTENTION_CODES.contains(&code.as_ref()))
        {
            return HandlerError::Contention(err.to_string());
        }
        let permanent = match &err {
            sqlx::Error::Database(db) => matches!(
                db.kind(),
                sqlx::error::ErrorKind::UniqueViolation
                    | sqlx::error::ErrorKind::ForeignKeyViolation
                    | sqlx::error::ErrorKind::NotNullViolation
                    | sqlx::error::ErrorKind::CheckViolation
            ),
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => true,
            _ => false,
        };
        if permanent {
            HandlerError::Permanent(err.to_string())
        } else {
            HandlerError::Transient(err.to_string())
        }
    }
}

/// Delay tiers and the attempt budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay of each tier queue `<queue>.retry.<n>`, n from 1. It must match the queues'
    /// `x-message-ttl` in the topology; the library uses it for logs only.
    pub delays: Vec<Duration>,
    /// Handling attempts in all (the first one included) before dead-lettering.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    /// Four tiers, as in manifests/topology: 1 s, 5 s, 30 s, 2 min; five attempts in all.
    fn default() -> Self {
        RetryPolicy {
            delays: [1, 5, 30, 120].map(Duration::from_secs).to_vec(),
            max_attempts: 5,
        }
    }
}

impl RetryPolicy {
    /// The name of tier `n` (from 1) of `queue`.
    pub fn tier_queue(queue: &str, n: usize) -> String {
        format!("{queue}.retry.{n}")
    }

    /// Every tier queue of `queue`.
    pub fn tier_queues(&self, queue: &str) -> Vec<String> {
        (1..=self.delays.len())
            .map(|n| Self::tier_queue(queue, n))
            .collect()
    }
}

/// Where a message goes after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Wait in `queue` for `delay`, then come back; `attempts` have failed so far.
    Retry {
        /// The tier queue.
        queue: String,
        /// Its delay.
        delay: Duration,
        /// Failed attempts including this one.
        attempts: u32,
    },
    /// Park in the dead-letter queue.
    DeadLetter {
        /// Stable label: `permanent`, `retries_exhausted` or a decode error kind.
        reason: &'static str,
        /// Human-readable explanation.
        detail: String,
        /// Failed attempts including this one.
        attempts: u32,
    },
}

/// Decides what happens after the handler failed on a message whose earlier attempts failed
/// `previous_attempts` times.
pub fn after_handler_failure(
    policy: &RetryPolicy,
    queue: &str,
    previous_attempts: u32,
    error: &HandlerError,
) -> Disposition {
    let attempts = previous_attempts.saturating_add(1);
    match error {
        HandlerError::Permanent(msg) => Disposition::DeadLetter {
            reason: "permanent",
            detail: msg.clone(),
            attempts,
        },
        HandlerError::Transient(msg) | HandlerError::Contention(msg)
            if attempts >= policy.max_attempts || policy.delays.is_empty() =>
        {
            Disposition::DeadLetter {
                reason: "retries_exhausted",
                detail: format!("gave up after {attempts} attempts: {msg}"),
                attempts,
            }
        }
        HandlerError::Transient(_) | HandlerError::Contention(_) => {
            // Attempt n waits in tier n; past the last tier, the last tier again.
            let tier = (attempts as usize).min(policy.delays.len());
            Disposition::Retry {
                queue: RetryPolicy::tier_queue(queue, tier),
                delay: policy.delays[tier - 1],
                attempts,
            }
        }
    }
}

/// A message that could not be decoded is parked at once: retrying cannot fix its bytes.
pub fn after_decode_failure(previous_attempts: u32, error: &DecodeError) -> Disposition {
    Disposition::DeadLetter {
        reason: error.kind(),
        detail: error.to_string(),
        attempts: previous_attempts.saturating_add(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            delays: [1, 5, 30].map(Duration::from_secs).to_vec(),
            max_attempts: 5,
        }
    }

    #[test]
    fn transient_failures_climb_the_tiers_then_dead_letter() {
        let p = policy();
        let err = HandlerError::transient("db timeout");
        let mut seen = vec![];
        for previous in 0..4 {
            match after_handler_failure(&p, "q", previous, &err) {
                Disposition::Retry {
                    queue,
                    delay,
                    attempts,
                } => {
                    assert_eq!(attempts, previous + 1);
                    seen.push((queue, delay));
                }
                other => panic!("attempt {previous}: {other:?}"),
            }
        }
        assert_eq!(
            seen,
            vec![
                ("q.retry.1".to_string(), Duration::from_secs(1)),
                ("q.retry.2".to_string(), Duration::from_secs(5)),
                ("q.retry.3".to_string(), Duration::from_secs(30)),
                ("q.retry.3".to_string(), Duration::from_secs(30)),
            ]
        );
        match after_handler_failure(&p, "q", 4, &err) {
            Disposition::DeadLetter {
                reason,
                attempts,
                detail,
            } => {
                assert_eq!(reason, "retries_exhausted");
                assert_eq!(attempts, 5);
                assert!(detail.contains("db timeout"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn permanent_and_decode_failures_dead_letter_at_once() {
        let p = policy();
        assert!(matches!(
            after_handler_failure(&p, "q", 0, &HandlerError::permanent("no such product")),
            Disposition::DeadLetter {
                reason: "permanent",
                attempts: 1,
                ..
            }
        ));
        assert!(matches!(
            after_decode_failure(0, &DecodeError::UnknownType("x".into())),
            Disposition::DeadLetter {
                reason: "unknown_type",
                ..
            }
        ));
    }
}
