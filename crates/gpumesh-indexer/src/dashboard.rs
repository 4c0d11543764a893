//! The web dashboard and explorer at `/`: one page of plain HTML, CSS and an ES module,
//! and two vendored npm packages (the world map's shapes and the TopoJSON decoder), all
//! compiled into the binary so the page works offline. The page reads the public API.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use gpumesh_types::ErrorCode;

use crate::error::Failure;

/// (name, content type, bytes) of every asset.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/style.css"),
    ),
    (
        "countries-110m.json",
        "application/json",
        include_bytes!("../assets/vendor/countries-110m.json"),
    ),
    (
        "topojson-client.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/vendor/topojson-client.min.js"),
    ),
];

const INDEX: &str = include_str!("../assets/index.html");

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

#[utoipa::path(get, path = "/", tag = "dashboard", summary = "The dashboard and explorer (HTML)", responses((status = 200, description = "the page", body = String, content_type = "text/html")))]
pub async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            // Only this indexer's own scripts and styles run, whatever a host names
            // itself; the page cannot be framed.
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        INDEX,
    )
        .into_response()
}

#[utoipa::path(get, path = "/assets/{name}", tag = "dashboard", summary = "The dashboard's scripts, styles and map data", params(("name" = String, Path, description = "the asset's file name")), responses((status = 200, description = "the asset", body = String), (status = 404, description = "no such asset", body = gpumesh_types::ApiError)))]
pub async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, bytes)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "public, max-age=3600"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            *bytes,
        )
            .into_response(),
        None => Failure::new(ErrorCode::NotFound, format!("no asset {name:?}")).into_response(),
    }
}
