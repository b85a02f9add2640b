package ai.mvmoe.demo

import ai.mvmoe.demo.core.BenchStats
import ai.mvmoe.demo.core.BenchmarkReport
import ai.mvmoe.demo.core.Memory
import ai.mvmoe.demo.core.Postprocess
import ai.mvmoe.demo.core.Preprocess
import ai.mvmoe.demo.core.RgbImage
import android.content.Context
import android.content.Intent
import android.os.Build
import androidx.compose.foundation.clickable
import androidx.compose.foundation.interaction.MutableInteractionSource
import androidx.compose.foundation.layout.Arrangement
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.padding
import androidx.compose.material3.Button
import androidx.compose.material3.FilterChip
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedTextField
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.remember
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.composed
import androidx.compose.ui.platform.LocalContext
import androidx.compose.ui.unit.dp
import androidx.core.content.ContextCompat
import androidx.core.content.FileProvider
import java.io.File
import java.time.Instant
import kotlin.concurrent.thread

/**
 * Benchmark screen: N timed runs after warm-up on CPU or GPU (LiteRT) / CPU (ExecuTorch), the statistics
 * `mvmoe profile latency` prints, and a benchmark JSON file (docs/apps.md) shared with the share sheet
 * (read it on the desktop with `mvmoe profile ingest FILE`).
 */
@Composable
fun BenchmarkScreen(models: List<ModelAsset>) {
    val context = LocalContext.current
    var asset by remember { mutableStateOf(models.first()) }
    var units by remember { mutableStateOf("cpu") }
    var runs by remember { mutableStateOf("50") }
    var warmup by remember { mutableStateOf("10") }
    var threads by remember { mutableStateOf("") }  // empty: the runtime's default
    var maxTails by remember { mutableStateOf("2") }
    var running by remember { mutableStateOf(false) }
    var report by remember { mutableStateOf<BenchmarkReport?>(null) }
    var file by remember { mutableStateOf<File?>(null) }
    var error by remember { mutableStateOf<String?>(null) }

    Column(Modifier.padding(12.dp), verticalArrangement = Arrangement.spacedBy(8.dp)) {
        ModelPicker(models, asset) { asset = it; if (it.runtime == "executorch") units = "cpu" }
        Row(horizontalArrangement = Arrangement.spacedBy(8.dp)) {
            val choices = if (asset.runtime == "litert") listOf("cpu", "gpu") else listOf("cpu")
            choices.forEach { u -> FilterChip(selected = units == u, onClick = { units = u }, label = { Text(u.uppercase()) }) }
        }
        OutlinedTextField(runs, { runs = it.filter(Char::isDigit) }, label = { Text("Runs") })
        OutlinedTextField(warmup, { warmup = it.filter(Char::isDigit) }, label = { Text("Warm-up") })
        // ExecuTorch: Module.load(path, mode, numThreads); LiteRT: CompiledModel.CpuOptions(numThreads)
        OutlinedTextField(threads, { threads = it.filter(Char::isDigit) }, label = { Text("CPU threads (empty: the runtime's default)") })
        if (asset.meta.programs != null) {
            OutlinedTextField(maxTails, { maxTails = it.filter(Char::isDigit) }, label = { Text("Expert tails kept loaded") })
        }
        Button(enabled = !running, onClick = {
            running = true
            error = null
            val a = asset
            val u = units
            val n = maxOf(1, runs.toIntOrNull() ?: 50)
            val w = warmup.toIntOrNull() ?: 10
            val t = threads.toIntOrNull()?.takeIf { it > 0 }
            val mt = maxOf(1, maxTails.toIntOrNull() ?: 2)
            thread(name = "benchmark") {
                val result = runCatching { measure(context, a, u, n, w, t, mt) }
                ContextCompat.getMainExecutor(context).execute {
                    running = false
                    result.onSuccess { report = it.first; file = it.second }.onFailure { error = it.message }
                }
            }
        }) { Text(if (running) "Running…" else "Run benchmark") }
        error?.let { Text(it, color = MaterialTheme.colorScheme.error) }
        report?.let { r ->
            val s = r.stats
            Text("${r.runtime} / ${r.computeUnits} on ${r.device}")
            Text("run: min %.3f  median %.3f  p90 %.3f  mean %.3f ms (%d runs)".format(s.minMs, s.medianMs, s.p90Ms, s.meanMs, s.runs))
            if (r.preprocessMs.isNotEmpty()) Text("median preprocess %.3f ms, postprocess %.3f ms; load %.0f ms, first %.1f ms".format(
                BenchStats.of(r.preprocessMs).medianMs, BenchStats.of(r.postprocessMs).medianMs, r.loadMs ?: 0.0, r.firstRunMs ?: 0.0))
            r.accelerator?.let { Text(it) }
            if (r.rssMibAfterRuns != null) Text("resident memory: %.1f MiB after load, %.1f MiB after the runs".format(
                r.rssMibAfterLoad ?: 0.0, r.rssMibAfterRuns))
            if (r.tailSwitchMs.isNotEmpty()) Text("cold expert-tail switch: median %.2f ms over %d loads (LRU of %d)".format(
                BenchStats.of(r.tailSwitchMs).medianMs, r.tailSwitchMs.size, r.tailsCached ?: 0))
            file?.let { f -> Button(onClick = { share(context, f) }) { Text("Share JSON") } }
        }
    }
}

/**
 * Times the runner's `run` on the bundled sample image (writing the input into the runtime's tensor,
 * then CompiledModel.run / Module.forward), and the preprocessing (image -> input) and postprocessing
 * (reading the outputs -> top-5) of each run apart; model load and the first inference are reported
 * too. The live screen's model is closed and its camera unbound while this tab is shown. Writes the
 * JSON atomically.
 */
private fun measure(context: Context, asset: ModelAsset, units: String, runs: Int, warmup: Int, threads: Int?,
                    maxTails: Int): Pair<BenchmarkReport, File> {
    val image = ImageUtils.rgb(ImageUtils.sample(context, SAMPLE))
    fun rss() = Memory.rssMib(File("/proc/self/status").readText())
    // ExecuTorch loads from a file: copy (and hash) a new .pte now, so load_ms is the load alone
    if (asset.runtime == "executorch") ModelAssets.toFile(context, asset)
    val t0 = System.nanoTime()
    Runner.create(context, asset, units, threads, maxTails).use { runner ->
        val loadMs = (System.nanoTime() - t0) / 1e6
        val rssLoad = rss()
        val t1 = System.nanoTime()
        runner.infer(Preprocess.toInput(image, asset.meta.input))
        val firstMs = (System.nanoTime() - t1) / 1e6
        repeat(warmup) { runner.infer(Preprocess.toInput(image, asset.meta.input)) }
        val pre = ArrayList<Double>(runs)
        val run = ArrayList<Double>(runs)
        val post = ArrayList<Double>(runs)
        repeat(runs) {
            val a = System.nanoTime()
            val input = Preprocess.toInput(image, asset.meta.input)
            val b = System.nanoTime()
            runner.run(input)
            val c = System.nanoTime()
            val out = runner.outputs()
            Postprocess.decode(asset.meta, out.logits, out.expertProbs)
            val d = System.nanoTime()
            pre += (b - a) / 1e6; run += (c - b) / 1e6; post += (d - c) / 1e6
        }
        val rssRuns = rss()
        // split artifacts: the sample image used one tail; load up to 8 others cold, each timed by the cache
        runner.tails?.let { cache ->
            asset.meta.programs!!.tails.keys.filter { it !in cache.resident }.take(8).forEach { cache.get(it) }
        }
        val report = BenchmarkReport(
            artifact = asset.meta.artifact, app = "android_demo",
            device = "${Build.MANUFACTURER} ${Build.MODEL} (Android ${Build.VERSION.RELEASE})",
            runtime = runner.runtime, computeUnits = runner.computeUnits, threads = runner.threads,
            warmup = warmup, runsMs = run, created = Instant.now().toString(),
            preprocessMs = pre, postprocessMs = post, loadMs = loadMs, firstRunMs = firstMs, accelerator = runner.accelerator,
            rssMibAfterLoad = rssLoad, rssMibAfterRuns = rssRuns,
            expertLayout = if (asset.meta.experts > 0) (if (runner.tails != null) "split" else "fused") else null,
            tailSwitchMs = runner.tails?.switchMs?.toList() ?: emptyList(), tailsCached = runner.tails?.capacity,
            checkpointSha256 = asset.meta.checkpointSha256,
        )
        val dir = File(context.cacheDir, "bench").apply { mkdirs() }
        val out = File(dir, report.fileName())
        val tmp = File(dir, report.fileName() + ".tmp")
        tmp.writeText(report.toJson())
        check(tmp.renameTo(out)) { "cannot write $out" }
        return report to out
    }
}

private fun share(context: Context, file: File) {
    val uri = FileProvider.getUriForFile(context, "${context.packageName}.files", file)
    val send = Intent(Intent.ACTION_SEND).apply {
        type = "application/json"
        putExtra(Intent.EXTRA_STREAM, uri)
        addFlags(Intent.FLAG_GRANT_READ_URI_PERMISSION)
    }
    context.startActivity(Intent.createChooser(send, file.name))
}

/** A click target without the ripple (used for the plain-text model list). */
fun Modifier.clickableNoRipple(onClick: () -> Unit): Modifier = composed {
    clickable(interactionSource = remember { MutableInteractionSource() }, indication = null, onClick = onClick)
}
