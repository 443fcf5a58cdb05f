use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::future::BoxFuture;

use super::{AccessToken, TokenParams, TokenSource};
use crate::error::{TokenError, TokenErrorKind};

/// The source behind [`PropelAuthLayer::bearer`](crate::PropelAuthLayer::bearer):
/// one token minted elsewhere. The cache asks for it once and keeps it until
/// its clock says it is stale; asked again, there is nothing to give.
#[derive(Debug)]
pub(crate) struct FixedToken {
    token: AccessToken,
    handed_out: AtomicBool,
}

impl FixedToken {
    pub(crate) fn new(token: AccessToken) -> Self {
        Self {
            token,
            handed_out: AtomicBool::new(false),
        }
    }
}

impl TokenSource for FixedToken {
    fn fetch_token(
        &self,
        _params: &TokenParams,
    ) -> BoxFuture<'static, Result<AccessToken, TokenError>> {
        let first = !self.handed_out.swap(true, Ordering::AcqRel);
        let result = if first && !self.token.is_expired() {
            Ok(self.token.clone())
        } else {
            Err(TokenError::new(TokenErrorKind::Expired))
        };
        Box::pin(std::future::ready(result))
    }
}
