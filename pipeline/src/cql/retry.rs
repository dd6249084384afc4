//! What the loader retries, and how long it waits: an explicit, tested policy.

use std::time::{Duration, Instant};

use scylla::client::session::Session;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;

/// Whether a failed request may succeed if sent again.
pub fn is_retryable(e: &ExecutionError) -> bool {
    match e {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, _)) => matches!(
            db,
            DbError::Overloaded
                | DbError::WriteTimeout { .. }
                | DbError::ReadTimeout { .. }
                | DbError::Unavailable { .. }
                | DbError::ServerError
                | DbError::IsBootstrapping
                | DbError::RateLimitReached { .. }
        ),
        ExecutionError::BadQuery(_) | ExecutionError::PrepareError(_) => false,
        // Broken connections, client timeouts, an empty pool: the next attempt may work.
        _ => true,
    }
}

/// Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^attempt)].
pub fn backoff(attempt: u32) -> Duration {
    use rand::Rng;
    let cap = Duration::from_secs(2);
    let ceiling = Duration::from_millis(20)
        .saturating_mul(1u32 << attempt.min(16))
        .min(cap);
    let ms = rand::rng().random_range(0..=ceiling.as_millis() as u64);
    Duration::from_millis(ms)
}

/// Execute an idempotent statement, retrying what the driver does not. Returns (attempts
/// used, latency of the successful attempt or the last error).
pub async fn execute(
    session: &Session,
    stmt: &PreparedStatement,
    values: &impl SerializeRow,
    max_attempts: u32,
) -> (u32, Result<Duration, ExecutionError>) {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let t = Instant::now();
        match session.execute_unpaged(stmt, values).await {
            Ok(_) => return (attempt, Ok(t.elapsed())),
            Err(e) if attempt < max_attempts && is_retryable(&e) => {
                tracing::debug!(error = %e, attempt, "retrying a request");
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(e) => return (attempt, Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_and_capped() {
        for attempt in 0..40 {
            assert!(backoff(attempt) <= Duration::from_secs(2));
        }
    }
}
