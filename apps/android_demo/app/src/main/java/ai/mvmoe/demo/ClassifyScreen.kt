package ai.mvmoe.demo

import ai.mvmoe.demo.core.LateBinding
import ai.mvmoe.demo.core.LiveSlot
import ai.mvmoe.demo.core.Parity
import ai.mvmoe.demo.core.Postprocess
import ai.mvmoe.demo.core.Prediction
import ai.mvmoe.demo.core.Preprocess
import ai.mvmoe.demo.core.RgbImage
import ai.mvmoe.demo.core.RollingMedian
import ai.mvmoe.demo.core.SerialWorker
import android.Manifest
import android.content.pm.PackageManager
import android.graphics.Bitmap
import androidx.activity.compose.rememberLauncherForActivityResult
import androidx.activity.result.PickVisualMediaRequest
import androidx.activity.result.contract.ActivityResultContracts
import androidx.camera.core.CameraSelector
import androidx.camera.core.ImageAnalysis
import androidx.camera.core.ImageProxy
import androidx.camera.core.Preview
import androidx.camera.lifecycle.ProcessCameraProvider
import androidx.camera.view.PreviewView
import androidx.compose.foundation.Image
import androidx.compose.foundation.layout.Arrangement
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.height
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.rememberScrollState
import androidx.compose.foundation.verticalScroll
import androidx.compose.material3.Button
import androidx.compose.material3.FilterChip
import androidx.compose.material3.Switch
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.DisposableEffect
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.remember
import androidx.compose.runtime.rememberUpdatedState
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.graphics.asImageBitmap
import androidx.compose.ui.layout.ContentScale
import androidx.compose.ui.platform.LocalContext
import androidx.compose.ui.unit.dp
import androidx.compose.ui.viewinterop.AndroidView
import androidx.core.content.ContextCompat
import androidx.lifecycle.compose.LocalLifecycleOwner
import java.util.concurrent.Executors

/**
 * Live screen: camera frames (CameraX ImageAnalysis), a picked photo or the bundled sample -> top-5
 * labels, the chosen expert and its superclass, and the latency of each inference with a rolling
 * median of the last 20. At load it runs the .json's parity set and shows the verdict, and says where
 * the model runs. The model is loaded off the main thread; the camera is unbound when the screen goes.
 */
@Composable
fun ClassifyScreen(models: List<ModelAsset>) {
    val context = LocalContext.current
    val lifecycleOwner = LocalLifecycleOwner.current
    var asset by remember { mutableStateOf(models.first()) }
    var units by remember { mutableStateOf("cpu") }
    var invert by remember { mutableStateOf(false) }
    var prediction by remember { mutableStateOf<Prediction?>(null) }
    var lastMs by remember { mutableStateOf<Double?>(null) }
    var medianMs by remember { mutableStateOf<Double?>(null) }
    var error by remember { mutableStateOf<String?>(null) }
    var status by remember { mutableStateOf("") }
    var checksOk by remember { mutableStateOf(true) }  // false: the parity set or the sample check failed
    var photo by remember { mutableStateOf<Bitmap?>(null) }
    var hasCamera by remember {
        mutableStateOf(ContextCompat.checkSelfPermission(context, Manifest.permission.CAMERA) == PackageManager.PERMISSION_GRANTED)
    }
    // One worker thread for the load, the frames and the photos; the runner in use lives in `slot`
    // (core/Lifecycle.kt). Posting after the screen left is refused, not a RejectedExecutionException.
    val worker = remember { SerialWorker(Executors.newSingleThreadExecutor()) }
    val slot = remember { LiveSlot<Runner>() }
    // Declared before the load effect, so Compose disposes it after: the load's onDispose below still
    // queues the runner's close(), which then runs after any frame in flight, before the thread ends.
    DisposableEffect(Unit) { onDispose { worker.close() } }
    val rolling = remember(asset, units) { RollingMedian(20) }
    val main = remember { ContextCompat.getMainExecutor(context) }

    // Load on the worker (never the main thread): model, .pte copy, first inference and the parity set.
    // A model or accelerator change, or leaving the screen, retires this load's ticket: a load finishing
    // after that closes its runner instead of publishing it, and the live runner is closed on the worker
    // after any frame still running on it; then the worker stops (when the screen leaves).
    DisposableEffect(asset, units) {
        val a = asset
        val gpu = units == "gpu"
        val ticket = slot.begin()
        status = "loading ${a.meta.artifact}…"
        worker.post {
            var owned: Runner? = null  // closed in `finally` unless the slot took it
            try {
                val t0 = System.nanoTime()
                val r = Runner.create(context, a, units).also { owned = it }
                val loadMs = (System.nanoTime() - t0) / 1e6
                if (!slot.isCurrent(ticket)) return@post  // superseded during the load: skip the checks
                val t1 = System.nanoTime()
                r.infer(FloatArray(a.meta.input.shape.fold(1) { x, y -> x * y }))
                val firstMs = (System.nanoTime() - t1) / 1e6
                // GPU results may be fp16: the tolerance widens to fp16's (Parity.tolerance)
                val parity = a.meta.paritySet?.let { set ->
                    Parity.runWithExperts(set, a.meta.input, accelerated = gpu) { x -> r.infer(x).let { it.logits to it.expertProbs } }
                }
                val sample = a.meta.sampleCheck?.let { check ->
                    Parity.sample(check, ImageUtils.rgb(ImageUtils.sample(context, SAMPLE)), a.meta.input, gpu) { r.infer(it).logits }
                }
                val ok = (parity?.ok ?: true) && (sample?.endsWith("FAILED") != true)
                val lines = listOf(parity?.summary() ?: "parity: no parity set in the .json (re-export with this mvmoe)") + listOfNotNull(sample)
                if (slot.publish(ticket, r)) owned = null else return@post
                main.execute {
                    if (!slot.isCurrent(ticket)) return@execute
                    error = null
                    checksOk = ok
                    status = "${r.accelerator} · load %.0f ms, first inference %.1f ms\n".format(loadMs, firstMs) + lines.joinToString("\n")
                }
            } catch (e: Exception) {
                main.execute { if (slot.isCurrent(ticket)) { error = "cannot load ${a.meta.artifact}: ${e.message}"; status = "" } }
            } finally {
                owned?.close()
            }
        }
        onDispose {
            val live = slot.retire(ticket)
            if (live != null && !worker.post { live.close() }) live.close()
        }
    }
    val currentAsset by rememberUpdatedState(asset)
    val currentInvert by rememberUpdatedState(invert)

    // Runs on the worker with the live runner; a frame arriving while one is in flight is dropped before
    // any conversion, and one arriving after the screen left (or between two models) does nothing.
    fun classify(image: () -> RgbImage) {
        if (slot.current() == null) return
        val a = currentAsset
        val inv = currentInvert
        worker.postFrame {
            val r = slot.current() ?: return@postFrame
            try {
                val input = Preprocess.toInput(image(), a.meta.input, invert = inv)
                val t0 = System.nanoTime()
                r.run(input)
                val ms = (System.nanoTime() - t0) / 1e6
                val out = r.outputs()
                val p = Postprocess.decode(a.meta, out.logits, out.expertProbs)
                val med = synchronized(rolling) { rolling.add(ms) }
                main.execute { prediction = p; lastMs = ms; medianMs = med; error = null }
            } catch (e: Exception) {
                main.execute { error = e.message }
            }
        }
    }

    fun show(load: () -> Bitmap) {
        worker.post {  // decode off the main thread, then classify the same bitmap (dropped if the screen left)
            val bmp = runCatching(load).getOrElse { e -> main.execute { error = "cannot open the image: ${e.message}" }; return@post }
            main.execute { photo = bmp; classify { ImageUtils.rgb(bmp) } }  // a Bitmap stays valid: convert later
        }
    }

    val permission = rememberLauncherForActivityResult(ActivityResultContracts.RequestPermission()) { granted ->
        hasCamera = granted
        if (!granted) error = "Camera permission denied: use Photo or Sample, or allow the camera in Settings."
    }
    val picker = rememberLauncherForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri ->
        if (uri != null) show { ImageUtils.load(context, uri) }
    }

    Column(Modifier.padding(12.dp).verticalScroll(rememberScrollState()), verticalArrangement = Arrangement.spacedBy(8.dp)) {
        ModelPicker(models, asset) { asset = it; prediction = null; if (it.runtime == "executorch") units = "cpu" }
        if (asset.runtime == "litert") Row(horizontalArrangement = Arrangement.spacedBy(8.dp)) {
            listOf("cpu", "gpu").forEach { u -> FilterChip(units == u, { units = u }, { Text(u.uppercase()) }) }
        }
        Row(horizontalArrangement = Arrangement.spacedBy(8.dp)) {
            Button(onClick = { photo = null; if (!hasCamera) permission.launch(Manifest.permission.CAMERA) }) { Text("Camera") }
            Button(onClick = { picker.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly)) }) { Text("Photo") }
            Button(onClick = { show { ImageUtils.sample(context, SAMPLE) } }) { Text("Sample") }
        }
        if (asset.meta.polarity == "light-on-dark") {
            Text("This model expects light digits on a dark ground. Dark ink on paper: switch on Invert.")
            Row { Switch(invert, { invert = it }); Text(" Invert colours") }
        }
        if (status.isNotEmpty()) Text(status, style = MaterialTheme.typography.bodySmall,
            color = if (checksOk) MaterialTheme.colorScheme.onSurface else MaterialTheme.colorScheme.error)
        val shown = photo
        if (shown != null) {
            Image(shown.asImageBitmap(), null, Modifier.fillMaxWidth().height(280.dp), contentScale = ContentScale.Crop)
        } else if (hasCamera) {
            // The frame arrives already converted (the analyzer copies it, then closes the ImageProxy).
            CameraPreview(lifecycleOwner, wanted = { !worker.busy }) { rgb -> classify { rgb } }
        }
        error?.let { Text(it, color = MaterialTheme.colorScheme.error) }
        prediction?.let { p ->
            Text("Top 5", style = MaterialTheme.typography.titleMedium)
            p.top.forEach { r -> Text("%-28s %5.1f%%".format(r.label, r.prob * 100)) }
            p.expert?.let { e ->
                Text("Expert $e (p = %.2f)".format(p.expertProb ?: 0f))
                Text("Superclass: ${p.superclass ?: "sc$e"}")
            }
        }
        lastMs?.let { Text("run %.2f ms (median of last %d: %.2f ms)".format(it, rolling.size, medianMs ?: it)) }
    }
}

/** The bundled sample in assets/sample/ (a light-on-dark digit, as the digits models expect). */
const val SAMPLE = "digit.png"

/**
 * CameraX preview + analysis bound to the lifecycle while this composable is shown, and unbound when
 * it leaves (tab switch, photo, benchmark), so no frame is analysed behind another screen; a provider
 * that arrives after the preview left is never bound ([LateBinding]).
 * On the analysis thread each frame is copied into an [RgbImage] (ImageProxy.toBitmap(), rotated
 * upright) and only then closed, as the LiteRT samples do (toBitmap() first, close() after): the
 * ImageProxy's buffers are reused by CameraX once it is closed. [onFrame] gets the copy, which stays
 * valid on any thread. Frames are skipped unconverted while [wanted] says no (one in flight).
 */
@Composable
fun CameraPreview(lifecycleOwner: androidx.lifecycle.LifecycleOwner, wanted: () -> Boolean, onFrame: (RgbImage) -> Unit) {
    val context = LocalContext.current
    val currentOnFrame by rememberUpdatedState(onFrame)
    val currentWanted by rememberUpdatedState(wanted)
    val analysisExecutor = remember { Executors.newSingleThreadExecutor() }
    // CameraX hands over its provider in a callback that may run after this preview left the screen:
    // the binding happens only while the preview is shown, and is undone exactly once when it goes.
    val binding = remember(lifecycleOwner) { LateBinding() }
    DisposableEffect(lifecycleOwner) {
        onDispose {
            binding.dispose()
            analysisExecutor.shutdown()
        }
    }
    AndroidView(
        modifier = Modifier.fillMaxWidth().height(280.dp),
        factory = { ctx ->
            val view = PreviewView(ctx)
            val future = ProcessCameraProvider.getInstance(ctx)
            future.addListener({
                if (binding.isDisposed) return@addListener  // left before the provider arrived: never bind
                val p = future.get()
                val preview = Preview.Builder().build().also { it.setSurfaceProvider(view.surfaceProvider) }
                val analysis = ImageAnalysis.Builder()
                    .setBackpressureStrategy(ImageAnalysis.STRATEGY_KEEP_ONLY_LATEST)
                    .setOutputImageFormat(ImageAnalysis.OUTPUT_IMAGE_FORMAT_RGBA_8888)
                    .build()
                analysis.setAnalyzer(analysisExecutor) { frame: ImageProxy ->
                    val rgb = try {
                        if (currentWanted()) ImageUtils.rgb(frame) else null  // copy the pixels out ...
                    } finally {
                        frame.close()  // ... then hand the buffer back to CameraX
                    }
                    if (rgb != null) currentOnFrame(rgb)
                }
                binding.bind {
                    p.unbindAll()
                    p.bindToLifecycle(lifecycleOwner, CameraSelector.DEFAULT_BACK_CAMERA, preview, analysis)
                    val undo: () -> Unit = { p.unbind(preview, analysis) }
                    undo
                }
            }, ContextCompat.getMainExecutor(context))
            view
        },
    )
}

@Composable
fun ModelPicker(models: List<ModelAsset>, selected: ModelAsset, onSelect: (ModelAsset) -> Unit) {
    var open by remember { mutableStateOf(false) }
    Column {
        Button(onClick = { open = !open }, modifier = Modifier.fillMaxWidth()) { Text(selected.meta.artifact) }
        if (open) models.forEach { m ->
            Text(m.meta.artifact, Modifier.fillMaxWidth().padding(8.dp).clickableNoRipple { onSelect(m); open = false })
        }
    }
}
