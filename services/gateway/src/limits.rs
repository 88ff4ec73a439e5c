//! Rate limits of the public, state-changing calls (apply, withdraw, change password), per client address and
//! minute, counted in Redis. They slow down guessing of applicants' ID numbers against the (sequential) application
//! ids. When Redis is down the limit is not enforced: losing Redis must not stop enrollment, and it is logged.

use std::net::IpAddr;

use axum::http::StatusCode;

use crate::AppState;
use crate::error::ApiError;

/// Counts one call of `scope` from `client` and refuses it when the minute's allowance is used up.
pub async fn public_write(state: &AppState, scope: &str, client: IpAddr) -> Result<(), ApiError> {
    let limit = state.public_writes_per_minute;
    if limit == 0 {
        return Ok(());
    }
    let minute = time::OffsetDateTime::now_utc().unix_timestamp() / 60;
    let key = state.redis.key(&format!("ratelimit:{scope}:{client}:{minute}"));
    let mut connection = state.redis.connection.clone();
    let counted: Result<(u32, i32), redis::RedisError> =
        redis::pipe().atomic().incr(&key, 1u32).expire(&key, 120).query_async(&mut connection).await;
    match counted {
        Ok((count, _)) if count > limit => {
            let mut error =
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "操作过于频繁，请一分钟后再试");
            error.retry_after = Some(60 - (time::OffsetDateTime::now_utc().unix_timestamp() % 60) as u64);
            Err(error)
        }
        Ok(_) => Ok(()),
        Err(error) => {
            tracing::warn!(%error, "redis unavailable: rate limit not enforced");
            Ok(())
        }
    }
}
