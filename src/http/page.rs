//! The chat page at `/`: one static HTML file (`chat.html`) compiled into
//! the binary, so a board serves it with no files beside the executable and
//! no network. The page is just another OpenAI client of this server
//! (`/v1/models`, streamed `/v1/chat/completions`,
//! `/v1/audio/transcriptions`); the API key, when the server has one, is
//! typed into the page, never served by it.

use axum::http::header;
use axum::response::{Html, IntoResponse};

/// The page, as compiled in.
pub const CHAT_HTML: &str = include_str!("chat.html");

pub async fn chat_page() -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, "no-cache"),
            // Nothing but this page's own script and its own server.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
            ),
        ],
        Html(CHAT_HTML),
    )
}
