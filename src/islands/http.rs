//! The islands' calls to Tally's API: the browser's `fetch` and its own JSON parser, so no serialization library is
//! compiled into the bundle. Errors arrive already worded in the reader's language (the server adds `message`).

use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Headers, RequestInit, Response};

/// Why a call failed: the server's code and message, or `None` when there was no readable answer (the network).
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: Option<String>,
    pub message: Option<String>,
}

impl From<JsValue> for Failure {
    fn from(_: JsValue) -> Self {
        Failure { code: None, message: None }
    }
}

impl Failure {
    /// The error paragraph for `form`: the server's words, or the form's `data-unreachable` ones when no answer came.
    pub fn notice(self, form: &web_sys::Element, test_id: Option<&str>) -> Option<web_sys::Element> {
        let message = self.message.unwrap_or_else(|| super::dom::data(form, "unreachable"));
        super::dom::error(self.code.as_deref(), &message, test_id)
    }
}

/// POSTs `body` (of `content_type`) to `path`, asking for JSON in `lang`, and answers the parsed JSON.
pub async fn post(path: &str, content_type: &str, body: &str, lang: &str) -> Result<JsValue, Failure> {
    let window = web_sys::window().ok_or(JsValue::NULL)?;
    let headers = Headers::new()?;
    headers.set("content-type", content_type)?;
    // Not text/html: the server function then answers with JSON rather than redirecting like a plain form post.
    headers.set("accept", "application/json")?;
    headers.set("accept-language", lang)?;
    let init = RequestInit::new();
    init.set_method("POST");
    init.set_headers(&headers);
    init.set_body(&JsValue::from_str(body));
    let response: Response = JsFuture::from(window.fetch_with_str_and_init(path, &init)).await?.dyn_into()?;
    let json = JsFuture::from(response.json()?).await?;
    if response.ok() {
        Ok(json)
    } else {
        Err(Failure { code: string(&json, "code"), message: string(&json, "message") })
    }
}

/// `body` as a JSON object with one string field.
pub fn json_body(field: &str, value: &str) -> String {
    let object = js_sys::Object::new();
    let _ = js_sys::Reflect::set(&object, &JsValue::from_str(field), &JsValue::from_str(value));
    js_sys::JSON::stringify(&object).ok().and_then(|text| text.as_string()).unwrap_or_default()
}

/// `value` form-encoded as `field=value`.
pub fn form_body(field: &str, value: &str) -> String {
    let params = web_sys::UrlSearchParams::new().expect("URLSearchParams exists in every browser");
    params.append(field, value);
    params.to_string().into()
}

/// A string field of a parsed JSON object.
pub fn string(json: &JsValue, field: &str) -> Option<String> {
    js_sys::Reflect::get(json, &JsValue::from_str(field)).ok()?.as_string()
}

/// An integer field of a parsed JSON object (JSON numbers are doubles; token counts are far below 2^53).
pub fn integer(json: &JsValue, field: &str) -> Option<i64> {
    js_sys::Reflect::get(json, &JsValue::from_str(field)).ok()?.as_f64().map(|n| n as i64)
}
