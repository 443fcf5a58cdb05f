//! The wall clock token deadlines are checked against: like the server's `exp`,
//! and unlike a monotonic clock it counts a host's suspension, so a token that
//! expired while the machine slept does not go out when it wakes. Every request
//! reads it: on Linux, Android and FreeBSD the coarse `CLOCK_REALTIME_COARSE`
//! (via `rustix`, a few milliseconds' resolution), elsewhere `SystemTime`.

use std::ops::Add;
use std::time::Duration;

/// A wall-clock time: milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Time(pub(crate) u64);

impl Time {
    /// Later than any time the clock reads.
    pub(crate) const NEVER: Time = Time(u64::MAX);

    /// How long from `earlier` to `self`; zero if `earlier` is later.
    pub(crate) fn since(self, earlier: Time) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;

    fn add(self, duration: Duration) -> Time {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Time(self.0.saturating_add(millis))
    }
}

/// Where a cache reads the time.
#[derive(Debug, Clone, Default)]
pub(crate) struct Clock {
    #[cfg(test)]
    test: Option<std::sync::Arc<TestClock>>,
}

impl Clock {
    #[inline]
    pub(crate) fn now(&self) -> Time {
        #[cfg(test)]
        if let Some(test) = &self.test {
            return test.now();
        }
        wall_now()
    }
}

#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
#[inline]
fn wall_now() -> Time {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    // A clock set before 1970 reads as 1970: every deadline is then due.
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let millis = u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000_000;
    Time(secs.saturating_mul(1000).saturating_add(millis))
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
use self::precise_now as wall_now;

/// The precise wall clock.
#[cfg_attr(
    any(target_os = "linux", target_os = "android", target_os = "freebsd"),
    cfg(test)
)]
fn precise_now() -> Time {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Time(since_epoch.as_millis() as u64)
}

/// A clock for tests: it starts at the real time, follows tokio's (paused-time
/// sleeps move it), and moves by hand with [`advance`](TestClock::advance).
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct TestClock {
    start: Time,
    tokio_start: tokio::time::Instant,
    advanced: std::sync::atomic::AtomicU64,
}

#[cfg(test)]
impl TestClock {
    pub(crate) fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            start: precise_now(),
            tokio_start: tokio::time::Instant::now(),
            advanced: Default::default(),
        })
    }

    pub(crate) fn advance(&self, by: Duration) {
        self.advanced
            .fetch_add(by.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }

    fn now(&self) -> Time {
        let advanced = self.advanced.load(std::sync::atomic::Ordering::SeqCst);
        self.start + self.tokio_start.elapsed() + Duration::from_millis(advanced)
    }

    pub(crate) fn clock(self: &std::sync::Arc<Self>) -> Clock {
        Clock {
            test: Some(std::sync::Arc::clone(self)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_agrees_with_the_system_clock() {
        let coarse = Clock::default().now();
        let precise = precise_now();
        // The coarse clock lags by at most its resolution (a few ms).
        assert!(precise.since(coarse) < Duration::from_millis(100));
        assert!(coarse.since(precise) < Duration::from_millis(100));
    }

    #[test]
    fn time_arithmetic_saturates() {
        assert_eq!(Time(5) + Duration::MAX, Time::NEVER);
        assert_eq!(Time(5).since(Time(9)), Duration::ZERO);
        assert_eq!(Time(9).since(Time(5)), Duration::from_millis(4));
    }
}
