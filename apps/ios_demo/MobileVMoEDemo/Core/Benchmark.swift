import Foundation

/// min / median / p90 / mean in ms, the definitions of `mvmoe profile latency` (numpy's linear percentile).
struct BenchStats: Equatable {
    let runs: Int
    let minMs: Double
    let medianMs: Double
    let p90Ms: Double
    let meanMs: Double

    init(_ runsMs: [Double]) {
        precondition(!runsMs.isEmpty, "no timed runs")
        let s = runsMs.sorted()
        runs = s.count
        minMs = s[0]
        medianMs = BenchStats.percentile(s, 50)
        p90Ms = BenchStats.percentile(s, 90)
        meanMs = runsMs.reduce(0, +) / Double(runsMs.count)
    }

    /// numpy.percentile(method="linear") on sorted values: rank q/100 * (n - 1), interpolated.
    static func percentile(_ sorted: [Double], _ q: Double) -> Double {
        let rank = q / 100 * Double(sorted.count - 1)
        let lo = Int(rank.rounded(.down)), hi = Int(rank.rounded(.up))
        return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - Double(lo))
    }
}

/// The median of the last `capacity` latencies, shown under each live prediction.
struct RollingMedian {
    let capacity: Int
    private(set) var window: [Double] = []

    init(capacity: Int = 20) { self.capacity = capacity }

    mutating func add(_ ms: Double) -> Double {
        window.append(ms)
        if window.count > capacity { window.removeFirst() }
        return median
    }

    var median: Double { window.isEmpty ? .nan : BenchStats.percentile(window.sorted(), 50) }
}

/// The benchmark file the app shares (docs/apps.md, "Benchmark file"); `mvmoe profile ingest FILE` reads it.
struct BenchmarkReport: Equatable {
    var artifact: String
    var app: String = "ios_demo"
    var device: String
    var runtime: String = "coreml"
    var computeUnits: String  // cpu | gpu | ane | all
    var threads: Int?
    var warmup: Int
    var runsMs: [Double]
    var created: String  // ISO-8601
    /// The prediction call alone is `runsMs`; image -> input and outputs -> top-5 per run, apart.
    var preprocessMs: [Double] = []
    var postprocessMs: [Double] = []
    var loadMs: Double?
    var firstRunMs: Double?
    /// Resident memory (phys_footprint, MiB) after loading and after the runs.
    var rssMibAfterLoad: Double?
    var rssMibAfterRuns: Double?
    /// "fused" or "split"; split only: every cold tail switch (ms) and the LRU size.
    var expertLayout: String?
    var tailSwitchMs: [Double] = []
    var tailsCached: Int?
    /// Where the model ran, e.g. "Core ML, compute units: Neural Engine (ops on Neural Engine 120, GPU 0, CPU 8)".
    var accelerator: String?
    /// The artifact .json's checkpoint_sha256: `mvmoe report` puts the numbers on that checkpoint's run.
    var checkpointSha256: String?

    var stats: BenchStats { BenchStats(runsMs) }

    func jsonObject() -> [String: Any] {
        [
            "format": "mvmoe-app-benchmark", "version": 1, "artifact": artifact, "app": app, "device": device,
            "runtime": runtime, "compute_units": computeUnits, "threads": threads.map { $0 as Any } ?? NSNull(),
            "warmup": warmup, "runs_ms": runsMs, "created": created,
            "preprocess_ms": preprocessMs, "postprocess_ms": postprocessMs,
            "load_ms": loadMs.map { $0 as Any } ?? NSNull(), "first_run_ms": firstRunMs.map { $0 as Any } ?? NSNull(),
            "rss_mib_after_load": rssMibAfterLoad.map { $0 as Any } ?? NSNull(),
            "rss_mib_after_runs": rssMibAfterRuns.map { $0 as Any } ?? NSNull(),
            "expert_layout": expertLayout.map { $0 as Any } ?? NSNull(), "tail_switch_ms": tailSwitchMs,
            "tails_cached": tailsCached.map { $0 as Any } ?? NSNull(),
            "accelerator": accelerator.map { $0 as Any } ?? NSNull(),
            "checkpoint_sha256": checkpointSha256.map { $0 as Any } ?? NSNull(),
        ]
    }

    func jsonData() throws -> Data {
        try JSONSerialization.data(withJSONObject: jsonObject(), options: [.prettyPrinted, .sortedKeys])
    }

    /// File name for the share sheet: bench_<artifact stem>_<runtime>_<units>.json
    var fileName: String {
        let stem = artifact.split(separator: ".").dropLast().joined(separator: ".")
        return "bench_\(stem.isEmpty ? artifact : stem)_\(runtime)_\(computeUnits).json"
    }

    static func isoNow() -> String { ISO8601DateFormatter().string(from: Date()) }
}
