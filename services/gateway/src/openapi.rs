//! The API's OpenAPI 3.1 document, generated from the handlers that serve it: every API route is
//! registered through `utoipa_axum::routes!`, which adds the handler's `#[utoipa::path]` to the
//! document as it adds the route to the router, so the two cannot drift apart. Served at
//! `/v1/openapi.json`.

use crate::problem::{Kind, Problem};
use std::collections::BTreeMap;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{RefOr, response::Response};

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Ebb",
        description = "Sheds a Bitcoin-mining fleet's load on demand: preview and start a \
            curtailment, watch it, stop it. Every error is an RFC 9457 problem \
            (`application/problem+json`) whose `type` is one of a closed list.",
        license(name = "Apache-2.0"),
    ),
    modifiers(&Bearer),
    security(("bearer" = [])),
    components(schemas(Problem, crate::problem::FieldError, crate::problem::ProblemType))
)]
pub struct ApiDoc;

/// The bearer API key every `/v1` route but this document needs.
struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The problems any authenticated route may answer, one response per status of the closed list
/// ([`Kind`]); each route adds its own successes.
pub struct Problems;

impl utoipa::IntoResponses for Problems {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let mut by_status: BTreeMap<u16, Vec<&'static str>> = BTreeMap::new();
        for kind in Kind::ALL {
            let (status, uri, _) = kind.describe();
            by_status.entry(status.as_u16()).or_default().push(uri);
        }
        by_status
            .into_iter()
            .map(|(status, uris)| {
                let content = utoipa::openapi::ContentBuilder::new()
                    .schema(Some(utoipa::openapi::Ref::from_schema_name("Problem")))
                    .build();
                let response = utoipa::openapi::ResponseBuilder::new()
                    .description(format!("A problem: {}", uris.join(", ")))
                    .content("application/problem+json", content)
                    .build();
                (status.to_string(), RefOr::T(response))
            })
            .collect()
    }
}
