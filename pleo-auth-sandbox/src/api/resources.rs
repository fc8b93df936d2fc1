//! The resource endpoints: `/v1/introspect`, employees, vendors and export jobs.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::run::{ApiRequest, CompanyRule, run};
use crate::records::ExportJob;
use crate::secrets::random_uuid;
use crate::state::Shared;
use crate::stats::AuthMethod;
use crate::time::rfc3339;

/// `GET /v1/introspect`.
pub(crate) async fn introspect(State(shared): State<Arc<Shared>>, req: ApiRequest) -> Response {
    run(&shared, &req, None, CompanyRule::Ignore, |_, ctx, _, _| {
        let auth_method = match ctx.method {
            AuthMethod::OAuth2 => "OAUTH2",
            AuthMethod::ApiKey => "API_KEY",
        };
        Ok((
            StatusCode::OK,
            Some(json!({ "data": {
                "authMethod": auth_method,
                "clientId": ctx.client_id,
                "scope": ctx.scopes.join(" "),
                "applicationName": ctx.application_name,
                "subjectURN": ctx.subject.urn(),
            }})),
        ))
    })
}

/// `GET /v2/employees` (`users:read`).
pub(crate) async fn employees(State(shared): State<Arc<Shared>>, req: ApiRequest) -> Response {
    run(
        &shared,
        &req,
        Some("users:read"),
        CompanyRule::AllCovered,
        |_, _, target, _| {
            let companies = target.companies();
            let data: Vec<Value> = shared
                .config
                .employees
                .iter()
                .filter(|e| companies.contains(&e.company))
                .map(|e| {
                    json!({
                        "id": e.id,
                        "companyId": e.company,
                        "firstName": e.first_name,
                        "lastName": e.last_name,
                        "email": e.email,
                    })
                })
                .collect();
            Ok((StatusCode::OK, Some(json!({ "data": data }))))
        },
    )
}

/// `GET /v1/vendors` (`vendors:read`).
pub(crate) async fn vendors(State(shared): State<Arc<Shared>>, req: ApiRequest) -> Response {
    run(
        &shared,
        &req,
        Some("vendors:read"),
        CompanyRule::One,
        |_, _, target, _| {
            let company = target.one()?;
            let data: Vec<Value> = shared
                .config
                .vendors
                .iter()
                .filter(|v| v.company == company)
                .map(|v| json!({ "id": v.id, "companyId": v.company, "name": v.name }))
                .collect();
            Ok((StatusCode::OK, Some(json!({ "data": data }))))
        },
    )
}

fn export_job_json(job: &ExportJob) -> Value {
    json!({
        "id": job.id,
        "companyId": job.company,
        "status": "PENDING",
        "createdAt": rfc3339(job.created_at),
    })
}

/// `GET /v1/export-jobs` (`export-jobs:read`).
pub(crate) async fn list_export_jobs(
    State(shared): State<Arc<Shared>>,
    req: ApiRequest,
) -> Response {
    run(
        &shared,
        &req,
        Some("export-jobs:read"),
        CompanyRule::One,
        |inner, _, target, _| {
            let company = target.one()?;
            let data: Vec<Value> = inner
                .export_jobs
                .iter()
                .filter(|j| j.company == company)
                .map(export_job_json)
                .collect();
            Ok((StatusCode::OK, Some(json!({ "data": data }))))
        },
    )
}

/// `POST /v1/export-jobs` (`export-jobs:write`).
pub(crate) async fn create_export_job(
    State(shared): State<Arc<Shared>>,
    req: ApiRequest,
) -> Response {
    run(
        &shared,
        &req,
        Some("export-jobs:write"),
        CompanyRule::One,
        |inner, _, target, now| {
            let company = target.one()?;
            req.json_object()?;
            let job = ExportJob {
                id: random_uuid()?,
                company,
                created_at: now,
            };
            let value = export_job_json(&job);
            inner.export_jobs.push(job);
            Ok((StatusCode::CREATED, Some(json!({ "data": value }))))
        },
    )
}
