//! One integration-test binary (linking DataFusion + delta-rs once is slow on 2 cores);
//! each stage has a module. Tests run the real `pipeline` binary in a temp data dir.

mod aggregate;
mod bad_input;
mod cli;
mod clients;
mod common;
mod continuous;
mod crash;
mod exactly_once;
mod faulty_proxy;
mod ingest;
mod kafka;
mod landing;
mod maintain;
mod object_store;
mod on_s3;
mod profiles;
mod report;
mod scylla;
mod served_profiles;
mod serving;
mod sql;
