//! The External API: `/v1/introspect`, installations and a few resource endpoints.
//!
//! [`run`] authenticates each request, checks its scope and company and logs it; the endpoint
//! handlers live in [`resources`] and [`installations`].

mod installations;
mod resources;
mod run;

pub(crate) use installations::{activate_installation, installation};
pub(crate) use resources::{create_export_job, employees, introspect, list_export_jobs, vendors};
