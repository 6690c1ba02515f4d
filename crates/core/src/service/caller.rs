//! Who a call is from, decided once where it comes in (an API key, the
//! open gateway's user header or body field, a job's submitter) and then
//! carried as a value: the fair queue ranks and caps by it.

use std::sync::Arc;

use super::{ErrorCode, GatewayError};
use crate::keys::Tenant;

/// Longest user name a call may give: the fair queue keeps one entry per
/// user, so names are bounded like any other client-controlled key.
pub const MAX_USER_BYTES: usize = 256;

/// Who a call is from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Caller {
    /// Its user (`None`: anonymous, capped as one).
    pub user: Option<String>,
    /// Its rank in the fair queue; higher goes first.
    pub priority: i32,
    /// Its user's own cap of calls running at once (an API key's), instead
    /// of `admission.queue.max_per_user`.
    pub max_concurrent: Option<u32>,
    /// Whether an API key named it: then no request field may rename it.
    pub keyed: bool,
    /// Its key and team, for their limits and their spend (`None`: no key).
    pub tenant: Option<Arc<Tenant>>,
}

impl Caller {
    /// The caller an API key names.
    pub fn keyed(user: String, priority: i32, max_concurrent: Option<u32>) -> Self {
        Self {
            user: Some(user),
            priority,
            max_concurrent,
            keyed: true,
            tenant: None,
        }
    }

    /// The same caller, with its key's and team's limits and spend.
    pub fn with_tenant(self, tenant: Arc<Tenant>) -> Self {
        Self {
            tenant: Some(tenant),
            ..self
        }
    }

    /// A caller of the open gateway, named by the client (or anonymous);
    /// 400 `user_name_too_long` past [`MAX_USER_BYTES`].
    pub fn open(user: Option<String>, priority: i32) -> Result<Self, GatewayError> {
        check_user(user.as_deref())?;
        Ok(Self {
            user,
            priority,
            max_concurrent: None,
            keyed: false,
            tenant: None,
        })
    }

    /// This caller, named `user` when the open gateway's client gave no
    /// other name (OpenAI's `user` field). A keyed caller stays its key's.
    pub fn or_named(self, user: Option<&str>) -> Result<Self, GatewayError> {
        if self.keyed || self.user.is_some() {
            return Ok(self);
        }
        let user = user.filter(|u| !u.is_empty());
        check_user(user)?;
        Ok(Self {
            user: user.map(str::to_owned),
            ..self
        })
    }
}

fn check_user(user: Option<&str>) -> Result<(), GatewayError> {
    if user.is_some_and(|u| u.len() > MAX_USER_BYTES) {
        return Err(GatewayError::refused_param(
            ErrorCode::UserNameTooLong,
            format!("a user name may be at most {MAX_USER_BYTES} bytes"),
            "user",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyed_caller_is_not_renamed_by_the_body() {
        let keyed = Caller::keyed("alice".into(), 2, Some(4));
        assert_eq!(keyed.clone().or_named(Some("mallory")).unwrap(), keyed);
    }

    #[test]
    fn an_open_caller_takes_the_bodys_name_within_the_limit() {
        let open = Caller::open(None, 0).unwrap();
        let named = open.clone().or_named(Some("bob")).unwrap();
        assert_eq!(named.user.as_deref(), Some("bob"));
        let long = "x".repeat(MAX_USER_BYTES + 1);
        let e = open.or_named(Some(&long)).unwrap_err();
        assert_eq!(e.code(), ErrorCode::UserNameTooLong);
        assert_eq!(e.status().as_u16(), 400);
        assert_eq!(
            Caller::open(Some(long), 0).unwrap_err().code(),
            ErrorCode::UserNameTooLong
        );
    }

    #[test]
    fn a_header_name_wins_over_the_bodys() {
        let open = Caller::open(Some("carol".into()), 0).unwrap();
        let named = open.or_named(Some("dave")).unwrap();
        assert_eq!(named.user.as_deref(), Some("carol"));
    }
}
