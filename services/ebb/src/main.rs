//! The `ebb` binary: parses the command line, installs the tracing subscriber (and span export) and
//! the Prometheus recorder once for the process, and hands over to [`ebb::run`].

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let matches = ebb::cli().get_matches();
    ebb_obs::init_tracing(
        ebb_obs::LogFormat::from_env(),
        ebb::service_name(matches.subcommand_name()),
    );
    // Installed before any service starts, so every metric lands in the one registry.
    let _ = ebb_obs::prometheus();
    let code = match ebb::run(matches).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    };
    // The batch exporter holds the last spans until it is shut down.
    ebb_obs::shutdown_tracing();
    code
}
