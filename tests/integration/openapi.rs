//! `/api/openapi.json`: the API's OpenAPI 3.1 description is served, well-formed, and true: every documented
//! operation is called and must answer with a documented status, and the successful answers carry every property
//! their documented schema requires.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use serde_json::Value;
use sqlx::PgPool;
use tally::usage::AI_TOKENS_EVENT;

use crate::support::{app, TestApp};

/// The documented operations: (method, path, its operation object).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            found.push((method.to_uppercase(), path.clone(), operation.clone()));
        }
    }
    found.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
    found
}

/// Every `$ref` in `value` points at a schema that exists.
fn refs_resolve(doc: &Value, value: &Value) {
    match value {
        Value::Object(fields) => {
            if let Some(Value::String(target)) = fields.get("$ref") {
                let name = target.strip_prefix("#/components/schemas/").expect("a schema reference");
                assert!(doc["components"]["schemas"].get(name).is_some(), "dangling $ref {target}");
            }
            fields.values().for_each(|v| refs_resolve(doc, v));
        }
        Value::Array(items) => items.iter().for_each(|v| refs_resolve(doc, v)),
        _ => {}
    }
}

/// The properties the schema of `operation`'s `status` answer requires.
fn required(doc: &Value, operation: &Value, status: u16) -> Vec<String> {
    let schema = &operation["responses"][status.to_string()]["content"]["application/json"]["schema"];
    let schema = match schema["$ref"].as_str() {
        Some(target) => &doc["components"]["schemas"][target.trim_start_matches("#/components/schemas/")],
        None => schema,
    };
    schema["required"]
        .as_array()
        .map(|r| r.iter().map(|n| n.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    body: Option<&str>,
    auth: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut request = Request::builder().method(method).uri(path).header(header::HOST, "127.0.0.1:3000");
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    for (name, value) in auth {
        request = request.header(*name, *value);
    }
    let reply =
        app.send(request.body(body.map(|b| Body::from(b.to_owned())).unwrap_or_else(Body::empty)).unwrap()).await;
    (reply.status, reply.body)
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn the_openapi_description_is_served_and_every_operation_answers_as_described(pool: PgPool) {
    let app = app(pool);
    let reply = app.get_with("/api/openapi.json", &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let doc = reply.json();
    assert_eq!(doc["openapi"], "3.1.0");
    // The parts OpenAPI 3.1 requires, every response described, every reference resolved.
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string(), "info: {}", doc["info"]);
    for (method, path, operation) in operations(&doc) {
        let responses = operation["responses"].as_object().expect("responses");
        assert!(!responses.is_empty(), "{method} {path}: no responses");
        for (status, response) in responses {
            assert!(status.len() == 3 && status.parse::<u16>().is_ok(), "{method} {path}: status {status}");
            assert!(response["description"].is_string(), "{method} {path} {status}: no description");
        }
    }
    refs_resolve(&doc, &doc);

    let documented: Vec<(String, String)> = operations(&doc).into_iter().map(|(m, p, _)| (m, p)).collect();
    let expected = [
        ("POST", "/api/ai/generate"),
        ("POST", "/api/stripe/webhook"),
        ("GET", "/api/usage/allowance"),
        ("POST", "/api/usage/batch"),
        ("GET", "/api/usage/export.csv"),
        ("POST", "/api/usage/record"),
    ];
    assert_eq!(documented, expected.map(|(m, p)| (m.to_owned(), p.to_owned())).to_vec(), "the services' API");

    // Called without credentials (and with an empty JSON body), each answers one of its documented statuses.
    for (method, path, operation) in operations(&doc) {
        let body = (method == "POST").then_some("{}");
        let (status, text) = call(&app, &method, &path, body, &[]).await;
        assert!(
            operation["responses"].get(status.as_str()).is_some(),
            "{method} {path} answered {status}, which it does not document: {text}"
        );
    }

    // Called as a service would, each answers its documented success with what its schema requires.
    let cookie = app.signup("ada@example.com").await;
    let key = format!("Bearer {}", app.api_key("ada@example.com").await);
    let by_key: &[(&str, &str)] = &[("authorization", &key)];
    let record = format!(r#"{{"eventType": "{AI_TOKENS_EVENT}", "quantity": 12}}"#);
    let batch = format!(r#"{{"events": [{{"eventType": "{AI_TOKENS_EVENT}", "quantity": 3}}]}}"#);
    let calls = [
        ("POST", "/api/usage/record", Some(record.as_str()), by_key),
        ("POST", "/api/usage/batch", Some(batch.as_str()), by_key),
        ("POST", "/api/ai/generate", Some(r#"{"prompt": "How are periods cut?"}"#), by_key),
        ("GET", "/api/usage/allowance", None, by_key),
    ];
    let operations = operations(&doc);
    for (method, path, body, auth) in calls {
        let (status, text) = call(&app, method, path, body, auth).await;
        assert_eq!(status, StatusCode::OK, "{method} {path}: {text}");
        let operation = &operations.iter().find(|(m, p, _)| m == method && p == path).unwrap().2;
        let answer: Value = serde_json::from_str(&text).unwrap();
        let required = required(&doc, operation, 200);
        assert!(!required.is_empty(), "{path}: a documented schema with required properties");
        for property in required {
            assert!(answer.get(&property).is_some(), "{method} {path}: `{property}` missing from {answer}");
        }
    }
    let (status, csv) = call(&app, "GET", "/api/usage/export.csv", None, &[("cookie", &cookie)]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(csv.lines().count(), 1 + 3, "a header and the three events: {csv}");
}
