//! A SQL query through Propel's `sqlV1` GraphQL field, printed as a table:
//! `cargo run --example sql_query [-- "SELECT …"]`.
//!
//! Runs (by default with `SELECT 1`) against FakePropel, which runs no SQL:
//! it answers `SELECT <literal>` with that value and any other query with a
//! canned row (the caller's tenant and a fixed count); or against your
//! account when `PROPEL_CLIENT_ID` and `PROPEL_CLIENT_SECRET` are set.

mod support;

use serde::Deserialize;
use serde_json::Value;
use support::Target;
use tower::{BoxError, Layer, ServiceExt};

/// The GraphQL answer: `data.sqlV1`, or `errors`.
#[derive(Deserialize)]
struct Answer {
    data: Option<Data>,
    #[serde(default)]
    errors: Vec<Message>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "sqlV1")]
    sql_v1: Option<Table>,
}

#[derive(Deserialize)]
struct Table {
    columns: Vec<Column>,
    rows: Vec<Vec<Value>>,
}

#[derive(Deserialize)]
struct Column {
    #[serde(rename = "columnName")]
    column_name: String,
}

#[derive(Deserialize)]
struct Message {
    message: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    support::exit_code(run().await)
}

async fn run() -> Result<(), BoxError> {
    let target = Target::new().await?;
    let sql = std::env::args().nth(1);
    let sql = sql.as_deref().unwrap_or(target.sql);

    let client = target
        .client_credentials()
        .build()?
        .layer(reqwest::Client::new());
    // A 403 (missing scope or policy), a 401 a fresh token could not cure
    // and a failed token request come back as typed errors.
    let response = client.oneshot(target.reqwest_request(sql)).await?;
    let status = response.status();
    let body = response.bytes().await?;
    let answer: Answer = serde_json::from_slice(&body)
        .map_err(|err| format!("HTTP {status}, not a GraphQL answer: {err}"))?;
    if let Some(error) = answer.errors.first() {
        return Err(format!("HTTP {status}, GraphQL error: {}", error.message).into());
    }
    let table = answer
        .data
        .and_then(|data| data.sql_v1)
        .ok_or_else(|| format!("HTTP {status}, an answer without data.sqlV1"))?;

    println!("{sql}\n");
    print_table(&table);
    Ok(())
}

/// Columns padded to their widest cell, a rule under the header, the count.
fn print_table(table: &Table) {
    let header: Vec<String> = table
        .columns
        .iter()
        .map(|c| c.column_name.clone())
        .collect();
    let rows: Vec<Vec<String>> = table
        .rows
        .iter()
        .map(|row| row.iter().map(cell).collect())
        .collect();
    let mut widths = vec![0; header.len()];
    for line in rows.iter().chain([&header]) {
        for (width, text) in widths.iter_mut().zip(line) {
            *width = (*width).max(text.chars().count());
        }
    }
    let print_line = |line: &[String]| {
        let cells: Vec<String> = (widths.iter().zip(line))
            .map(|(width, text)| format!("{text:<width$}"))
            .collect();
        println!("{}", cells.join(" | ").trim_end());
    };
    print_line(&header);
    let rule: Vec<String> = widths.iter().map(|width| "-".repeat(*width)).collect();
    println!("{}", rule.join("-+-"));
    rows.iter().for_each(|row| print_line(row));
    println!(
        "({} row{})",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    );
}

/// A cell as text: strings as they are, `NULL` for null, JSON for the rest.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => "NULL".to_owned(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}
