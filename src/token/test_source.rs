//! A [`TokenSource`] that tests script: counted calls, a delay, and a queue
//! of results.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::{AccessToken, TokenParams, TokenSource};
use crate::error::{TokenError, TokenErrorKind};

/// What the next fetch does.
#[derive(Clone, Debug)]
pub(crate) enum Step {
    /// A token `tokenN` (N = call number) living this long.
    Token(Duration),
    Fail(TokenErrorKind),
    Hang,
}

#[derive(Clone, Debug)]
pub(crate) struct ScriptedSource {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    calls: AtomicUsize,
    delay: Duration,
    script: Mutex<VecDeque<Step>>,
    /// What to do once the script runs out.
    otherwise: Mutex<Step>,
    call_times: Mutex<Vec<Instant>>,
    params_seen: Mutex<Vec<TokenParams>>,
}

impl ScriptedSource {
    pub(crate) fn new(delay: Duration, otherwise: Step) -> Self {
        Self {
            inner: Arc::new(Inner {
                calls: AtomicUsize::new(0),
                delay,
                script: Mutex::default(),
                otherwise: Mutex::new(otherwise),
                call_times: Mutex::default(),
                params_seen: Mutex::default(),
            }),
        }
    }

    /// Tokens of `lifetime`, after `delay`.
    pub(crate) fn tokens(delay: Duration, lifetime: Duration) -> Self {
        Self::new(delay, Step::Token(lifetime))
    }

    pub(crate) fn then(self, step: Step) -> Self {
        self.inner.script.lock().unwrap().push_back(step);
        self
    }

    pub(crate) fn set_otherwise(&self, step: Step) {
        *self.inner.otherwise.lock().unwrap() = step;
    }

    pub(crate) fn calls(&self) -> usize {
        self.inner.calls.load(Ordering::SeqCst)
    }

    pub(crate) fn call_times(&self) -> Vec<Instant> {
        self.inner.call_times.lock().unwrap().clone()
    }

    pub(crate) fn params_seen(&self) -> Vec<TokenParams> {
        self.inner.params_seen.lock().unwrap().clone()
    }
}

impl TokenSource for ScriptedSource {
    fn fetch_token(
        &self,
        params: &TokenParams,
    ) -> BoxFuture<'static, Result<AccessToken, TokenError>> {
        let inner = Arc::clone(&self.inner);
        let n = inner.calls.fetch_add(1, Ordering::SeqCst) + 1;
        inner.call_times.lock().unwrap().push(Instant::now());
        inner.params_seen.lock().unwrap().push(params.clone());
        let step = inner
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| inner.otherwise.lock().unwrap().clone());
        Box::pin(async move {
            tokio::time::sleep(inner.delay).await;
            match step {
                Step::Token(lifetime) => AccessToken::new(format!("token{n}"), lifetime),
                Step::Fail(kind) => Err(TokenError::new(kind)),
                Step::Hang => std::future::pending().await,
            }
        })
    }
}
