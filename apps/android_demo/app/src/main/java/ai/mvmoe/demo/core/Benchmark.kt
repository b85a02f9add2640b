package ai.mvmoe.demo.core

import kotlin.math.ceil
import kotlin.math.floor

/** min / median / p90 / mean in ms, the definitions of `mvmoe profile latency` (numpy's linear percentile). */
data class BenchStats(val runs: Int, val minMs: Double, val medianMs: Double, val p90Ms: Double, val meanMs: Double) {
    companion object {
        fun of(runsMs: List<Double>): BenchStats {
            require(runsMs.isNotEmpty()) { "no timed runs" }
            val s = runsMs.sorted()
            return BenchStats(s.size, s[0], percentile(s, 50.0), percentile(s, 90.0), runsMs.sum() / runsMs.size)
        }

        /** numpy.percentile(method="linear") on sorted values: rank q/100 * (n - 1), interpolated. */
        fun percentile(sorted: List<Double>, q: Double): Double {
            val rank = q / 100.0 * (sorted.size - 1)
            val lo = floor(rank).toInt()
            val hi = ceil(rank).toInt()
            return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo)
        }
    }
}

/** The median of the last [capacity] latencies, shown under each live prediction. */
class RollingMedian(private val capacity: Int = 20) {
    private val window = ArrayDeque<Double>()

    fun add(ms: Double): Double {
        window.addLast(ms)
        if (window.size > capacity) window.removeFirst()
        return median
    }

    val median: Double get() = if (window.isEmpty()) Double.NaN else BenchStats.percentile(window.sorted(), 50.0)
    val size: Int get() = window.size
}

/**
 * The benchmark file the app shares (docs/apps.md, "Benchmark file"); `mvmoe profile ingest FILE` reads it.
 * [runsMs] times the runner's run: the input written into the runtime's tensor plus its run call; [preprocessMs] (image -> input tensor) and
 * [postprocessMs] (outputs -> top-5) are timed apart, one entry per run, or empty when not measured.
 * [loadMs] and [firstRunMs] are the model load and the first (untimed-warmup) inference.
 * [created] is an ISO-8601 string made by the caller (java.time.Instant.now() on Android), so tests stay deterministic.
 */
data class BenchmarkReport(
    val artifact: String,
    val app: String,
    val device: String,
    val runtime: String,
    val computeUnits: String,
    val threads: Int?,
    val warmup: Int,
    val runsMs: List<Double>,
    val created: String,
    val preprocessMs: List<Double> = emptyList(),
    val postprocessMs: List<Double> = emptyList(),
    val loadMs: Double? = null,
    val firstRunMs: Double? = null,
    /** Where the model ran, e.g. "LiteRT GPU (fully delegated)" or "XNNPACK CPU, 4 threads". */
    val accelerator: String? = null,
    /** Resident memory (VmRSS / phys_footprint, MiB) after loading the model and after the timed runs. */
    val rssMibAfterLoad: Double? = null,
    val rssMibAfterRuns: Double? = null,
    /** "fused" (one program) or "split" (trunk + expert tails); split only: cold tail switches and the LRU size. */
    val expertLayout: String? = null,
    val tailSwitchMs: List<Double> = emptyList(),
    val tailsCached: Int? = null,
    /** The artifact .json's checkpoint_sha256: `mvmoe report` puts the numbers on that checkpoint's run. */
    val checkpointSha256: String? = null,
) {
    init {
        require(app == "ios_demo" || app == "android_demo") { "app must be ios_demo or android_demo, got '$app'" }
        require(runtime in setOf("coreml", "litert", "executorch")) { "unknown runtime '$runtime'" }
        require(computeUnits in setOf("cpu", "gpu", "ane", "nnapi", "all")) { "unknown compute units '$computeUnits'" }
        require(runsMs.isNotEmpty()) { "no timed runs" }
        require(preprocessMs.isEmpty() || preprocessMs.size == runsMs.size) { "preprocess_ms needs one entry per run" }
        require(postprocessMs.isEmpty() || postprocessMs.size == runsMs.size) { "postprocess_ms needs one entry per run" }
        require(expertLayout == null || expertLayout in setOf("fused", "split")) { "expert_layout must be fused or split" }
        require(tailSwitchMs.isEmpty() || expertLayout == "split") { "tail_switch_ms needs a split artifact" }
    }

    val stats: BenchStats get() = BenchStats.of(runsMs)

    fun toJson(): String = Json.write(
        linkedMapOf(
            "format" to "mvmoe-app-benchmark",
            "version" to 1,
            "artifact" to artifact,
            "app" to app,
            "device" to device,
            "runtime" to runtime,
            "compute_units" to computeUnits,
            "threads" to threads,
            "warmup" to warmup,
            "runs_ms" to runsMs,
            "created" to created,
            "preprocess_ms" to preprocessMs,
            "postprocess_ms" to postprocessMs,
            "load_ms" to loadMs,
            "first_run_ms" to firstRunMs,
            "accelerator" to accelerator,
            "rss_mib_after_load" to rssMibAfterLoad,
            "rss_mib_after_runs" to rssMibAfterRuns,
            "expert_layout" to expertLayout,
            "tail_switch_ms" to tailSwitchMs,
            "tails_cached" to tailsCached,
            "checkpoint_sha256" to checkpointSha256,
        ),
        indent = 2,
    ) + "\n"

    /** File name for the share sheet: bench_<artifact stem>_<runtime>_<units>.json */
    fun fileName(): String = "bench_${artifact.substringBeforeLast('.')}_${runtime}_$computeUnits.json"
}
