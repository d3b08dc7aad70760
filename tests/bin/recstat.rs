//! `shmix-recstat FILE FORMAT CHANNELS RATE`: what a virtual card recorded: frames, seconds,
//! first and last non-silent frame, and the peak level per channel in dBFS. Used by the demo.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: shmix-recstat FILE FORMAT(S16_LE|S32_LE|FLOAT_LE) CHANNELS RATE");
        return ExitCode::from(2);
    }
    let (path, format) = (&args[1], args[2].as_str());
    let (Ok(channels), Ok(rate)) = (args[3].parse::<usize>(), args[4].parse::<f64>()) else {
        eprintln!("shmix-recstat: CHANNELS and RATE must be numbers");
        return ExitCode::from(2);
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("shmix-recstat: cannot read {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Normalised samples in [-1, 1].
    let samples: Vec<f64> = match format {
        "S16_LE" => bytes.chunks_exact(2).map(|b| f64::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0).collect(),
        "S32_LE" => bytes
            .chunks_exact(4)
            .map(|b| f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])) / 2_147_483_648.0)
            .collect(),
        "FLOAT_LE" => bytes.chunks_exact(4).map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect(),
        other => {
            eprintln!("shmix-recstat: unsupported format {other}");
            return ExitCode::from(2);
        }
    };
    let frames = samples.len() / channels.max(1);
    let mut peaks = vec![0f64; channels];
    let (mut first, mut last) = (None, None);
    for (i, frame) in samples.chunks_exact(channels).enumerate() {
        for (c, s) in frame.iter().enumerate() {
            peaks[c] = peaks[c].max(s.abs());
        }
        if frame.iter().any(|s| *s != 0.0) {
            first.get_or_insert(i);
            last = Some(i);
        }
    }
    println!("recording:   {path}");
    println!("frames:      {frames} ({:.3} s at {rate} Hz, {channels} channels, {format})", frames as f64 / rate);
    match (first, last) {
        (Some(a), Some(b)) => {
            println!("sound:       frames {a}..{} ({:.3} s), silence around it", b + 1, (b + 1 - a) as f64 / rate)
        }
        _ => println!("sound:       none (all silence)"),
    }
    for (c, p) in peaks.iter().enumerate() {
        let db = if *p > 0.0 { format!("{:.2} dBFS", 20.0 * p.log10()) } else { "-inf dBFS".into() };
        println!("peak ch{c}:    {p:.5} ({db})");
    }
    ExitCode::SUCCESS
}
