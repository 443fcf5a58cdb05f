//! [`Settings`]: the tuning knobs of a token layer, checked in one place.

use std::time::Duration;

use crate::error::ConfigError;

/// When tokens are refreshed, how failures are paced, and how many parameter
/// sets (tenants) get a token cache of their own.
///
/// The defaults suit Propel's hour-long tokens. Change a field and hand them to
/// [`TokenLayerBuilder::settings`](crate::TokenLayerBuilder::settings), which checks them.
///
/// ```
/// use std::time::Duration;
/// use tower_propel_auth::{Credentials, PropelAuthLayer, Settings};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut settings = Settings::default();
/// settings.fetch_timeout = Duration::from_secs(5);
/// settings.max_token_sets = 100;
/// let layer = PropelAuthLayer::client_credentials(Credentials::new("APP01…", "secret")?)
///     .settings(settings)
///     .build()?;
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Settings {
    /// Refresh in the background once this fraction of a token's usable
    /// lifetime (less the safety margin) has passed. In (0, 1]; default 0.8.
    pub refresh_at: f64,
    /// Refresh up to this fraction of the usable lifetime earlier, at random,
    /// so that a fleet does not refresh in step. In [0, `refresh_at`]; default 0.1.
    pub refresh_jitter: f64,
    /// A token counts as expired this long before it does (clock skew, latency);
    /// at most a quarter of its lifetime. Default 30 s.
    pub safety_margin: Duration,
    /// The longest one token request may take. Default 10 s.
    pub fetch_timeout: Duration,
    /// After a failed token request with no usable token cached, requests fail
    /// at once with its error for this long (stretched by a `Retry-After`, up to
    /// a minute); also the least time between two token drops caused by 401s.
    /// Default 1 s; zero turns both off.
    pub cooldown: Duration,
    /// The wait after a failed background refresh, doubling each time up to
    /// [`backoff_max`](Self::backoff_max), with jitter. Default 500 ms.
    pub backoff_base: Duration,
    /// The longest wait between background refresh tries. Default 30 s.
    pub backoff_max: Duration,
    /// The most parameter sets ([`TokenParams`](crate::TokenParams)) with a
    /// token cache of their own; past it, one is dropped (CLOCK-Pro: one-off
    /// sets first). Default 4096.
    pub max_token_sets: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            refresh_at: 0.8,
            refresh_jitter: 0.1,
            safety_margin: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(10),
            cooldown: Duration::from_secs(1),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            max_token_sets: 4096,
        }
    }
}

impl Settings {
    /// Refuses settings that would spin against the Token API, hold nothing,
    /// or overflow the clock.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let fail = |what: &str, problem: &str| Err(ConfigError::invalid(what, problem));
        if !(self.refresh_at > 0.0 && self.refresh_at <= 1.0) {
            return fail("settings.refresh_at", "it must be in (0, 1]");
        }
        if !(0.0..=self.refresh_at).contains(&self.refresh_jitter) {
            return fail("settings.refresh_jitter", "it must be in [0, refresh_at]");
        }
        if self.fetch_timeout.is_zero() {
            return fail("settings.fetch_timeout", "it must be more than zero");
        }
        if self.backoff_base.is_zero() || self.backoff_base > self.backoff_max {
            return fail("settings.backoff_base", "it must be in (0, backoff_max]");
        }
        // As long as any token may live: longer only overflows the clock.
        const DAY: Duration = super::access_token::MAX_LIFETIME;
        let durations = [
            self.safety_margin,
            self.fetch_timeout,
            self.cooldown,
            self.backoff_max,
        ];
        if durations.iter().any(|d| *d > DAY) {
            return fail("settings", "no duration may exceed a day");
        }
        if self.max_token_sets == 0 {
            return fail("settings.max_token_sets", "it must be at least 1");
        }
        Ok(())
    }

    /// The backoff before background try `n + 1` after `n` failed ones:
    /// "equal jitter", half fixed and half random, so tries never bunch up.
    pub(crate) fn backoff(&self, failures: u32, random_unit: f64) -> Duration {
        let full = self
            .backoff_base
            .saturating_mul(1 << failures.clamp(1, 17).saturating_sub(1))
            .min(self.backoff_max);
        full / 2 + full.mul_f64(0.5 * random_unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_nonsense_is_refused() {
        assert!(Settings::default().validate().is_ok());
        let refused = |change: fn(&mut Settings)| {
            let mut settings = Settings::default();
            change(&mut settings);
            settings.validate().unwrap_err().to_string()
        };
        assert!(refused(|s| s.refresh_at = 1.5).contains("refresh_at"));
        assert!(refused(|s| s.refresh_jitter = 0.9).contains("refresh_jitter"));
        assert!(refused(|s| s.fetch_timeout = Duration::ZERO).contains("fetch_timeout"));
        assert!(refused(|s| s.backoff_base = Duration::ZERO).contains("backoff"));
        assert!(refused(|s| s.backoff_base = Duration::from_secs(60)).contains("backoff"));
        assert!(refused(|s| s.cooldown = Duration::MAX).contains("a day"));
        assert!(refused(|s| s.max_token_sets = 0).contains("max_token_sets"));
    }

    #[test]
    fn backoff_doubles_with_equal_jitter_up_to_the_maximum() {
        let settings = Settings::default();
        assert_eq!(settings.backoff(1, 0.0), Duration::from_millis(250));
        assert_eq!(settings.backoff(1, 1.0), Duration::from_millis(500));
        assert_eq!(settings.backoff(3, 1.0), Duration::from_secs(2));
        assert_eq!(settings.backoff(40, 1.0), Duration::from_secs(30));
    }
}
