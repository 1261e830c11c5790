fn main() -> std::process::ExitCode {
    diskvault::cli::main()
}
