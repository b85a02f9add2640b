package ai.mvmoe.demo

import ai.mvmoe.demo.core.Parity
import ai.mvmoe.demo.core.Postprocess
import ai.mvmoe.demo.core.Prediction
import ai.mvmoe.demo.core.Preprocess
import ai.mvmoe.demo.core.RgbImage
import ai.mvmoe.demo.core.RollingMedian
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
import java.util.concurrent.atomic.AtomicBoolean

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
    var runner by remember { mutableStateOf<Runner?>(null) }
    var hasCamera by remember {
        mutableStateOf(ContextCompat.checkSelfPermission(context, Manifest.permission.CAMERA) == PackageManager.PERMISSION_GRANTED)
    }
    val executor = remember { Executors.newSingleThreadExecutor() }
    // Declared first, so Compose disposes it last: the load effect below still queues its close().
    DisposableEffect(Unit) { onDispose { executor.shutdown() } }
    val busy = remember { AtomicBoolean(false) }
    val rolling = remember(asset, units) { RollingMedian(20) }
    val main = remember { ContextCompat.getMainExecutor(context) }

    // Load on `executor` (never the main thread): model, .pte copy, first inference and the parity set.
    DisposableEffect(asset, units) {
        val a = asset
        val gpu = units == "gpu"
        runner = null
        status = "loading ${a.meta.artifact}…"
        var loaded: Runner? = null
        executor.execute {
            try {
                val t0 = System.nanoTime()
                val r = Runner.create(context, a, units)
                val loadMs = (System.nanoTime() - t0) / 1e6
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
                loaded = r
                main.execute {
                    runner = r
                    error = null
                    checksOk = ok
                    status = "${r.accelerator} · load %.0f ms, first inference %.1f ms\n".format(loadMs, firstMs) + lines.joinToString("\n")
                }
            } catch (e: Exception) {
                main.execute { error = "cannot load ${a.meta.artifact}: ${e.message}"; status = "" }
            }
        }
        onDispose { runCatching { executor.execute { loaded?.close() } }.onFailure { loaded?.close() } }
    }
    // The camera analyzer and the photo decoder are long-lived callbacks: they read the current state.
    val currentRunner by rememberUpdatedState(runner)
    val currentAsset by rememberUpdatedState(asset)
    val currentInvert by rememberUpdatedState(invert)

    // Runs on `executor`; frames arriving while one is in flight are dropped before any conversion.
    fun classify(image: () -> RgbImage) {
        val r = currentRunner ?: return
        val a = currentAsset
        if (!busy.compareAndSet(false, true)) return
        executor.execute {
            try {
                val input = Preprocess.toInput(image(), a.meta.input, invert = currentInvert)
                val t0 = System.nanoTime()
                r.run(input)
                val ms = (System.nanoTime() - t0) / 1e6
                val out = r.outputs()
                val p = Postprocess.decode(a.meta, out.logits, out.expertProbs)
                val med = synchronized(rolling) { rolling.add(ms) }
                main.execute { prediction = p; lastMs = ms; medianMs = med; error = null }
            } catch (e: Exception) {
                main.execute { error = e.message }
            } finally {
                busy.set(false)
            }
        }
    }

    fun show(load: () -> Bitmap) {
        executor.execute {  // decode off the main thread, then classify the same bitmap
            val bmp = runCatching(load).getOrElse { e -> main.execute { error = "cannot open the image: ${e.message}" }; return@execute }
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
            CameraPreview(lifecycleOwner, wanted = { !busy.get() }) { rgb -> classify { rgb } }
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
 * it leaves (tab switch, photo, benchmark), so no frame is analysed behind another screen.
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
    var provider by remember { mutableStateOf<ProcessCameraProvider?>(null) }
    DisposableEffect(lifecycleOwner) {
        onDispose {
            provider?.unbindAll()
            analysisExecutor.shutdown()
        }
    }
    AndroidView(
        modifier = Modifier.fillMaxWidth().height(280.dp),
        factory = { ctx ->
            val view = PreviewView(ctx)
            val future = ProcessCameraProvider.getInstance(ctx)
            future.addListener({
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
                p.unbindAll()
                p.bindToLifecycle(lifecycleOwner, CameraSelector.DEFAULT_BACK_CAMERA, preview, analysis)
                provider = p
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
