//! A SQL query through Propel's `sqlV1` GraphQL field, printed as a table:
//! `cargo run --example sql_query [-- "SELECT …"]`.
//!
//! With no `PROPEL_CLIENT_ID` / `PROPEL_CLIENT_SECRET` in the environment it
//! runs against `FakePropel` (which answers every query with the same canned
//! row). With both set it queries real Propel, by default with `SELECT 1`;
//! `PROPEL_API_URL` and `PROPEL_OAUTH_URL` are honoured.

mod support;

use std::process::ExitCode;

use serde::Deserialize;
use support::Target;
use tower::{BoxError, ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> ExitCode {
    support::exit_code(run().await)
}

/// The GraphQL answer: `data.sqlV1`, or `errors`.
#[derive(Deserialize)]
struct Answer {
    data: Option<Data>,
    #[serde(default)]
    errors: Vec<GraphqlError>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "sqlV1")]
    sql_v1: Option<SqlResult>,
}

#[derive(Deserialize)]
struct SqlResult {
    columns: Vec<Column>,
    rows: Vec<Vec<serde_json::Value>>,
}

#[derive(Deserialize)]
struct Column {
    #[serde(rename = "columnName")]
    column_name: String,
}

#[derive(Deserialize)]
struct GraphqlError {
    message: String,
}

async fn run() -> Result<(), BoxError> {
    let target = Target::new().await?;
    let api_url = target.url()?;
    let sql = std::env::args()
        .nth(1)
        .unwrap_or_else(|| target.sql.to_owned());

    let layer = target.builder.build()?;
    let client = ServiceBuilder::new()
        .layer(layer)
        .service(reqwest::Client::new());

    // `query { sqlV1(input: {query: "SELECT …"}) { columns { columnName } rows } }`,
    // the SQL quoted and escaped by serde_json.
    let request = support::sql_request(&api_url, &sql);

    println!("{sql}\n");
    // A 401 that a fresh token cannot cure, a 403 (missing scope or policy)
    // and Token API failures come back as typed `tower_propel_auth::Error`s.
    let response = client.oneshot(request).await?;
    let status = response.status();
    let body = response.bytes().await?;
    let answer: Answer = serde_json::from_slice(&body).map_err(|err| {
        format!(
            "HTTP {status}, not a GraphQL answer ({err}): {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )
    })?;
    if !answer.errors.is_empty() {
        let messages: Vec<_> = answer.errors.iter().map(|e| e.message.as_str()).collect();
        return Err(format!("HTTP {status}, GraphQL errors: {}", messages.join("; ")).into());
    }
    let result = answer
        .data
        .and_then(|data| data.sql_v1)
        .ok_or_else(|| format!("HTTP {status}, an answer without data.sqlV1"))?;

    print_table(&result);
    Ok(())
}

/// Columns padded to their widest cell, a rule under the header, and the row count.
fn print_table(result: &SqlResult) {
    let header: Vec<String> = result
        .columns
        .iter()
        .map(|column| column.column_name.clone())
        .collect();
    let rows: Vec<Vec<String>> = result
        .rows
        .iter()
        .map(|row| row.iter().map(cell).collect())
        .collect();
    let columns = rows
        .iter()
        .map(Vec::len)
        .chain([header.len()])
        .max()
        .unwrap_or(0);
    let mut widths = vec![0; columns];
    for line in rows.iter().chain([&header]) {
        for (width, text) in widths.iter_mut().zip(line) {
            *width = (*width).max(text.chars().count());
        }
    }
    let format_line = |line: &[String]| {
        let cells: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(i, width)| format!("{:<width$}", line.get(i).map_or("", String::as_str)))
            .collect();
        cells.join(" | ").trim_end().to_owned()
    };
    println!("{}", format_line(&header));
    let rule: Vec<String> = widths.iter().map(|width| "-".repeat(*width)).collect();
    println!("{}", rule.join("-+-"));
    for row in &rows {
        println!("{}", format_line(row));
    }
    let n = rows.len();
    println!("({n} row{})", if n == 1 { "" } else { "s" });
}

/// A cell as text: strings as they are, `NULL` for null, JSON for the rest.
fn cell(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "NULL".to_owned(),
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}
