use futures_util::future::BoxFuture;

use super::{AccessToken, TokenParams, TokenSource};
use crate::error::{TokenError, TokenErrorKind};

/// The source behind [`PropelAuthLayer::bearer`](crate::PropelAuthLayer::bearer):
/// one token minted elsewhere, good until it expires.
#[derive(Debug)]
pub(crate) struct FixedToken(pub(crate) AccessToken);

impl TokenSource for FixedToken {
    fn fetch_token(
        &self,
        _params: &TokenParams,
    ) -> BoxFuture<'static, Result<AccessToken, TokenError>> {
        let result = if self.0.is_expired() {
            Err(TokenError::new(TokenErrorKind::Expired))
        } else {
            Ok(self.0.clone())
        };
        Box::pin(std::future::ready(result))
    }
}
