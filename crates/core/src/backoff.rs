//! The one back-off: a delay that doubles after each failure up to a cap,
//! and starts over after a success. Every retry in the daemon (device
//! discovery, registration, the Kubernetes API, the XID watcher) uses it,
//! each with its own bounds declared once beside its use.

use std::time::Duration;

/// Exponential back-off, `first` doubling to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The delay to wait now, without advancing.
    pub fn current(&self) -> Duration {
        self.next
    }

    /// The delay to wait now; the one after it is doubled (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.grow();
        delay
    }

    /// A failure without a wait of its own: the next delay doubles.
    pub fn grow(&mut self) {
        self.next = self.next.saturating_mul(2).min(self.max);
    }

    /// A success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let delays: Vec<_> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.current(), Duration::from_millis(100));
        b.grow();
        assert_eq!(b.current(), Duration::from_millis(200));
    }
}
