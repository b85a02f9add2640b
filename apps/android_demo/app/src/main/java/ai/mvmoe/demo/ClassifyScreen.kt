package ai.mvmoe.demo

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
import androidx.compose.material3.Button
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.DisposableEffect
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.remember
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.graphics.asImageBitmap
import androidx.compose.ui.layout.ContentScale
import androidx.compose.ui.platform.LocalContext
import androidx.compose.ui.platform.LocalLifecycleOwner
import androidx.compose.ui.unit.dp
import androidx.compose.ui.viewinterop.AndroidView
import androidx.core.content.ContextCompat
import java.util.concurrent.Executors
import java.util.concurrent.atomic.AtomicBoolean

/**
 * Live screen: camera frames (CameraX ImageAnalysis) or a picked photo -> top-5 labels, the chosen expert
 * and its superclass, and the latency of each inference with a rolling median of the last 20.
 */
@Composable
fun ClassifyScreen(models: List<ModelAsset>) {
    val context = LocalContext.current
    val lifecycleOwner = LocalLifecycleOwner.current
    var asset by remember { mutableStateOf(models.first()) }
    var prediction by remember { mutableStateOf<Prediction?>(null) }
    var lastMs by remember { mutableStateOf<Double?>(null) }
    var medianMs by remember { mutableStateOf<Double?>(null) }
    var error by remember { mutableStateOf<String?>(null) }
    var photo by remember { mutableStateOf<Bitmap?>(null) }
    var hasCamera by remember {
        mutableStateOf(ContextCompat.checkSelfPermission(context, Manifest.permission.CAMERA) == PackageManager.PERMISSION_GRANTED)
    }
    val executor = remember { Executors.newSingleThreadExecutor() }
    val busy = remember { AtomicBoolean(false) }
    val rolling = remember(asset) { RollingMedian(20) }
    val runner = remember(asset) {
        runCatching { Runner.create(context, asset, "cpu") }.onFailure { error = "cannot load ${asset.meta.artifact}: ${it.message}" }.getOrNull()
    }
    DisposableEffect(runner) { onDispose { executor.execute { runner?.close() } } }

    // Runs on `executor`; frames arriving while one is in flight are dropped.
    fun classify(img: RgbImage) {
        val r = runner ?: return
        if (!busy.compareAndSet(false, true)) return
        executor.execute {
            try {
                val input = Preprocess.toInput(img, asset.meta.input)
                val t0 = System.nanoTime()
                val out = r.run(input)
                val ms = (System.nanoTime() - t0) / 1e6
                val p = Postprocess.decode(asset.meta, out.logits, out.expertProbs)
                val med = synchronized(rolling) { rolling.add(ms) }
                ContextCompat.getMainExecutor(context).execute { prediction = p; lastMs = ms; medianMs = med; error = null }
            } catch (e: Exception) {
                ContextCompat.getMainExecutor(context).execute { error = e.message }
            } finally {
                busy.set(false)
            }
        }
    }

    val permission = rememberLauncherForActivityResult(ActivityResultContracts.RequestPermission()) { hasCamera = it }
    val picker = rememberLauncherForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri ->
        if (uri != null) {
            val bmp = ImageUtils.load(context, uri)
            photo = bmp
            classify(ImageUtils.rgb(bmp))
        }
    }

    Column(Modifier.padding(12.dp), verticalArrangement = Arrangement.spacedBy(8.dp)) {
        ModelPicker(models, asset) { asset = it; prediction = null }
        Row(horizontalArrangement = Arrangement.spacedBy(8.dp)) {
            Button(onClick = { photo = null; if (!hasCamera) permission.launch(Manifest.permission.CAMERA) }) { Text("Camera") }
            Button(onClick = { picker.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly)) }) { Text("Photo") }
        }
        val shown = photo
        if (shown != null) {
            Image(shown.asImageBitmap(), null, Modifier.fillMaxWidth().height(280.dp), contentScale = ContentScale.Crop)
        } else if (hasCamera) {
            AndroidView(
                modifier = Modifier.fillMaxWidth().height(280.dp),
                factory = { ctx ->
                    val view = PreviewView(ctx)
                    val future = ProcessCameraProvider.getInstance(ctx)
                    future.addListener({
                        val provider = future.get()
                        val preview = Preview.Builder().build().also { it.setSurfaceProvider(view.surfaceProvider) }
                        val analysis = ImageAnalysis.Builder()
                            .setBackpressureStrategy(ImageAnalysis.STRATEGY_KEEP_ONLY_LATEST)
                            .setOutputImageFormat(ImageAnalysis.OUTPUT_IMAGE_FORMAT_RGBA_8888)
                            .build()
                        analysis.setAnalyzer(Executors.newSingleThreadExecutor()) { frame ->
                            frame.use { if (!busy.get()) classify(ImageUtils.rgb(it)) }
                        }
                        provider.unbindAll()
                        provider.bindToLifecycle(lifecycleOwner, CameraSelector.DEFAULT_BACK_CAMERA, preview, analysis)
                    }, ContextCompat.getMainExecutor(ctx))
                    view
                },
            )
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
        lastMs?.let { Text("%.2f ms (median of last %d: %.2f ms)".format(it, rolling.size, medianMs ?: it)) }
    }
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
