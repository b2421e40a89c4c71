//! Absolute deadlines in `select!` loops.

/// Sleeps until `deadline`, or forever without one: the arm of a `select!`
/// whose timer may be unset.
pub async fn sleep_until_if(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
