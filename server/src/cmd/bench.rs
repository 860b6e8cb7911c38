//! `moeflow bench`: a load generator for any OpenAI-compatible endpoint (moeflow, vLLM,
//! SGLang, ...), with `vllm bench serve`'s flags and result fields, so numbers from different
//! servers are measured the same way. The measuring is `moeflow-loadgen`; this is its command
//! line, its output files and its exit status.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use moeflow_loadgen::dataset::{self, DatasetSpec};
use moeflow_loadgen::{
    fetch_model_name, run_sweep, sweep_table, BenchConfig, BenchReport, Endpoint, GoodputLimits,
    RequestRate, Sweep,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Server to benchmark (plain HTTP).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    base_url: String,
    /// Model name sent with every request (default: the first one `GET /v1/models` lists).
    #[arg(long)]
    model: Option<String>,
    /// API path: /v1/completions or /v1/chat/completions.
    #[arg(long, default_value = "/v1/completions")]
    endpoint: String,
    /// Requests to send (per sweep point).
    #[arg(long, default_value_t = 1000)]
    num_prompts: usize,
    /// Requests in flight at most (default: unlimited).
    #[arg(long)]
    max_concurrency: Option<usize>,
    /// Mean requests per second, Poisson arrivals; inf sends everything at once.
    #[arg(long, default_value_t = f64::INFINITY)]
    request_rate: f64,
    /// random (words from a fixed list), sharegpt (--dataset-path JSON) or file (--dataset-path
    /// text, one prompt per line, or JSONL with {"prompt": ..., "max_tokens": ...}).
    #[arg(long, default_value = "random", value_parser = ["random", "sharegpt", "file"])]
    dataset_name: String,
    #[arg(long)]
    dataset_path: Option<PathBuf>,
    /// Prompt length of random prompts in words (about one token each; the server's own
    /// count is reported when it gives one).
    #[arg(long, default_value_t = 1024)]
    random_input_len: u32,
    /// Output tokens asked of random prompts (`max_tokens`).
    #[arg(long, default_value_t = 128)]
    random_output_len: u32,
    /// Spread of random lengths: each is drawn from [len (1 - r), len (1 + r)].
    #[arg(long, default_value_t = 0.0)]
    random_range_ratio: f64,
    /// Output tokens asked of sharegpt and file prompts (default: sharegpt: the reference
    /// answer's estimated length; file: a line's max_tokens, else 128).
    #[arg(long)]
    output_len: Option<u32>,
    /// Write one JSON record per run (per sweep point) to this file, one per line.
    #[arg(long)]
    result_file: Option<PathBuf>,
    /// Seeds prompts and arrivals.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Ask the server to ignore end-of-sequence tokens (vLLM's `ignore_eos`), so every output
    /// has the asked length.
    #[arg(long)]
    ignore_eos: bool,
    /// Per-request timeout in seconds (connect, queue, prefill and the whole stream).
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// Stop each run after this many seconds even if prompts remain.
    #[arg(long)]
    duration: Option<f64>,
    /// Latency limits for goodput, e.g. `--goodput ttft:200 tpot:50` (milliseconds; also
    /// e2el).
    #[arg(long, num_args = 1..)]
    goodput: Vec<String>,
    /// Run once per concurrency, e.g. 1,16,64.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["sweep_request_rate", "max_concurrency"])]
    sweep_concurrency: Vec<usize>,
    /// Run once per request rate, e.g. 1,4,16,inf.
    #[arg(long, value_delimiter = ',', conflicts_with = "request_rate")]
    sweep_request_rate: Vec<f64>,
    /// Send unstreamed requests (no TTFT or ITL then).
    #[arg(long)]
    no_stream: bool,
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Bearer token for servers that want one.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Unmeasured requests sent first (a failure stops the benchmark).
    #[arg(long, default_value_t = 1)]
    warmup_requests: usize,
    /// Keep retrying the first warmup request this many seconds (a server still starting).
    #[arg(long, default_value_t = 0.0)]
    ready_timeout: f64,
}

fn seconds(flag: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("{flag} {s}: not a number of seconds"))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(args))
}

async fn run_async(args: Args) -> anyhow::Result<()> {
    if args.num_prompts == 0 {
        bail!("--num-prompts must be at least 1");
    }
    let timeout = seconds("--timeout", args.timeout)?;
    let model = match &args.model {
        Some(m) => m.clone(),
        None => fetch_model_name(&args.base_url, args.api_key.as_deref(), timeout).await?,
    };
    let mut config = BenchConfig::new(&args.base_url, model);
    config.endpoint = args.endpoint.parse::<Endpoint>()?;
    config.max_concurrency = args.max_concurrency;
    config.request_rate = RequestRate::from_f64(args.request_rate)?;
    config.seed = args.seed;
    config.duration = args
        .duration
        .map(|d| seconds("--duration", d))
        .transpose()?;
    config.timeout = timeout;
    config.ignore_eos = args.ignore_eos;
    config.stream = !args.no_stream;
    config.temperature = args.temperature;
    config.api_key = args.api_key.clone();
    config.goodput = GoodputLimits::parse(&args.goodput)?;
    config.warmup_requests = args.warmup_requests;
    config.ready_timeout = seconds("--ready-timeout", args.ready_timeout)?;
    config.show_progress = std::io::stderr().is_terminal();
    config.validate()?;

    let spec = dataset_spec(&args)?;
    let prompts = dataset::load(&spec, args.num_prompts, args.seed)?;
    let sweep = if !args.sweep_concurrency.is_empty() {
        Sweep::Concurrency(args.sweep_concurrency.clone())
    } else if !args.sweep_request_rate.is_empty() {
        Sweep::RequestRate(
            args.sweep_request_rate
                .iter()
                .map(|&r| RequestRate::from_f64(r))
                .collect::<Result<_, _>>()?,
        )
    } else {
        Sweep::Concurrency(Vec::new())
    };
    let mut results = match &args.result_file {
        Some(path) => Some(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        ),
        None => None,
    };
    let mut write_error = None;
    let mut on_point = |r: &BenchReport| {
        println!("{r}");
        if let Some(f) = results.as_mut() {
            if let Err(e) = writeln!(f, "{}", r.to_json()) {
                write_error.get_or_insert(e);
            }
        }
    };
    let reports = match &sweep {
        Sweep::Concurrency(v) if v.is_empty() => {
            let r = moeflow_loadgen::run(&config, &prompts).await?;
            on_point(&r);
            vec![r]
        }
        sweep => run_sweep(&config, &prompts, sweep, on_point).await?,
    };
    if let Some(e) = write_error {
        return Err(e).context("writing the result file");
    }
    if reports.len() > 1 {
        println!("{}", sweep_table(&reports));
    }
    for r in &reports {
        let point = match r.max_concurrency {
            Some(c) => format!("concurrency {c}, request rate {}", r.request_rate),
            None => format!("unlimited concurrency, request rate {}", r.request_rate),
        };
        if let Some(why) = &r.aborted {
            bail!("the run at {point} was aborted: {why}");
        }
        if r.completed == 0 {
            bail!("no request completed at {point}; errors: {:?}", r.errors);
        }
    }
    Ok(())
}

fn dataset_spec(args: &Args) -> anyhow::Result<DatasetSpec> {
    let path = || {
        args.dataset_path
            .clone()
            .with_context(|| format!("--dataset-name {} needs --dataset-path", args.dataset_name))
    };
    Ok(match args.dataset_name.as_str() {
        "sharegpt" => DatasetSpec::ShareGpt {
            path: path()?,
            output_len: args.output_len,
        },
        "file" => DatasetSpec::File {
            path: path()?,
            output_len: args.output_len.unwrap_or(128),
        },
        _ => DatasetSpec::Random {
            input_len: args.random_input_len,
            output_len: args.random_output_len,
            range_ratio: args.random_range_ratio,
        },
    })
}
