//! Bearer API-key authentication.

use std::sync::Arc;

use axum::{extract::FromRequestParts, http::request::Parts};

use super::{ApiError, AppState};

/// The authenticated tenant's name.
#[derive(Debug, Clone)]
pub struct AuthTenant(pub String);

impl FromRequestParts<Arc<AppState>> for AuthTenant {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <api key>"))?;
        let key = header
            .to_str()
            .ok()
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, k)| k.trim())
            .filter(|k| !k.is_empty())
            .ok_or_else(|| ApiError::unauthorized("Authorization must be Bearer <api key>"))?;
        state
            .tenants
            .authenticate(key)
            .map(|t| AuthTenant(t.name.clone()))
            .ok_or_else(|| ApiError::unauthorized("unknown API key"))
    }
}
