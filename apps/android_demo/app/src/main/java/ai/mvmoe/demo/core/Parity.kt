package ai.mvmoe.demo.core

import java.util.Base64

/**
 * The parity set an artifact's .json carries (`parity_set`, docs/apps.md): a few eval images as
 * model-size RGB bytes with the PyTorch logits on them. The app runs them through its runtime at
 * load and shows "parity: max diff X, top-1 agree Y/Z" — the check of what really runs on the phone.
 */
class ParityImage(val rgb: RgbImage, val label: Int?, val logits: FloatArray, val expertProbs: FloatArray? = null)

class ParitySet(val images: List<ParityImage>, val maxAbsDiffTol: Double?, val source: String) {
    companion object {
        fun fromMap(m: Map<*, *>, numClasses: Int): ParitySet {
            val enc = m["encoding"]
            if (enc != "rgb8-base64") throw MetadataException("metadata: parity_set.encoding must be rgb8-base64, got '$enc'")
            val h = ((m["height"] as? Double) ?: 0.0).toInt()
            val w = ((m["width"] as? Double) ?: 0.0).toInt()
            val list = m["images"] as? List<*> ?: throw MetadataException("metadata: missing list 'parity_set.images'")
            val images = list.mapIndexed { i, e ->
                val entry = e as? Map<*, *> ?: throw MetadataException("metadata: parity_set.images[$i] must be an object")
                val bytes = try {
                    Base64.getDecoder().decode(entry["rgb"] as? String ?: "")
                } catch (x: IllegalArgumentException) {
                    throw MetadataException("metadata: parity_set.images[$i].rgb is not base64")
                }
                if (h <= 0 || w <= 0 || bytes.size != h * w * 3) throw MetadataException(
                    "metadata: parity_set.images[$i] has ${bytes.size} bytes, expected ${h}x${w}x3")
                val logits = (entry["logits"] as? List<*>)?.map { (it as? Double)?.toFloat() ?: Float.NaN }?.toFloatArray()
                if (logits == null || logits.size != numClasses || logits.any { it.isNaN() }) throw MetadataException(
                    "metadata: parity_set.images[$i].logits must be $numClasses numbers")
                val probs = (entry["expert_probs"] as? List<*>)?.map { (it as? Double)?.toFloat() ?: Float.NaN }?.toFloatArray()
                ParityImage(RgbImage(w, h, bytes), (entry["label"] as? Double)?.toInt(), logits, probs)
            }
            return ParitySet(images, m["max_abs_diff_tol"] as? Double, (m["source"] as? String) ?: "")
        }
    }
}

/**
 * The verdict: ok when every top-1 agrees, every chosen expert agrees (where the .json stored
 * `expert_probs` and the runtime returned them), and (no tolerance or max |diff| <= tolerance).
 */
data class ParityResult(val maxAbsDiff: Double, val top1Agree: Int, val total: Int, val tolerance: Double?,
                        val expertAgree: Int? = null, val expertTotal: Int = 0) {
    val ok: Boolean get() = top1Agree == total && (expertAgree == null || expertAgree == expertTotal) &&
        (tolerance == null || maxAbsDiff <= tolerance)

    /** One line for the UI, e.g. "parity: max diff 2.1e-06, top-1 agree 8/8, expert agree 8/8 (ok)"; "FAILED" otherwise. */
    fun summary(): String = "parity: max diff ${fmt("%.2g", maxAbsDiff)}, top-1 agree $top1Agree/$total" +
        (expertAgree?.let { ", expert agree $it/$expertTotal" } ?: "") +
        (if (ok) " (ok)" else if (top1Agree < total) " FAILED (top-1 differs)"
         else if (expertAgree != null && expertAgree < expertTotal) " FAILED (expert differs)"
         else " FAILED (over ${fmt("%.0e", tolerance)})")

    private fun fmt(f: String, v: Double?) = String.format(java.util.Locale.ROOT, f, v)
}

/**
 * The bundled sample image at full size (`sample_check` in the .json): its RGB bytes' SHA-256 as the
 * exporter decoded them, and PyTorch's logits after the app preprocessing (crop, antialiased resize,
 * normalisation) of those bytes. The app decodes its own copy, preprocesses it with its own code and
 * compares: the one check that covers the app's crop and resize end to end.
 */
class SampleCheck(val image: String, val width: Int, val height: Int, val rgbSha256: String, val logits: FloatArray,
                  val tolerance: Double?) {
    companion object {
        fun fromMap(m: Map<*, *>, numClasses: Int): SampleCheck {
            val logits = (m["logits"] as? List<*>)?.map { (it as? Double)?.toFloat() ?: Float.NaN }?.toFloatArray()
            if (logits == null || logits.size != numClasses || logits.any { it.isNaN() }) throw MetadataException(
                "metadata: sample_check.logits must be $numClasses numbers")
            return SampleCheck((m["image"] as? String) ?: "", ((m["width"] as? Double) ?: 0.0).toInt(),
                ((m["height"] as? Double) ?: 0.0).toInt(), (m["rgb_sha256"] as? String) ?: "", logits,
                m["max_abs_diff_tol"] as? Double)
        }
    }
}

object Parity {
    /** LiteRT GPU may compute in fp16 (and Core ML off the CPU): widen an fp32 tolerance to fp16's. */
    const val HALF_TOL = 5e-2

    fun tolerance(stored: Double?, accelerated: Boolean): Double? =
        if (stored == null || !accelerated) stored else maxOf(stored, HALF_TOL)

    /** The sample check: the app's own preprocessing of [image] vs the exporter's; null image bytes differ. */
    fun sample(check: SampleCheck, image: RgbImage, input: InputSpec, accelerated: Boolean,
               logitsOf: (FloatArray) -> FloatArray): String {
        if (image.width != check.width || image.height != check.height || StaleCopy.sha256Hex(image.rgb.inputStream()) != check.rgbSha256)
            return "sample: the bundled ${check.image} decodes to other pixels than the exporter read: not compared"
        val got = logitsOf(Preprocess.toInput(image, input))
        val r = compare(listOf(check.logits), listOf(got), tolerance(check.tolerance, accelerated))
        val same5 = Postprocess.topK(check.logits, 5).contentEquals(Postprocess.topK(got, 5))
        return "sample ${check.width}x${check.height} through the app preprocessing: max diff ${"%.2g".format(java.util.Locale.ROOT, r.maxAbsDiff)}, " +
            (if (same5) "same top-5" else "top-5 differs") + if (r.ok && same5) " (ok)" else " FAILED"
    }

    fun compare(expected: List<FloatArray>, got: List<FloatArray>, tolerance: Double?,
                expectedExperts: List<FloatArray?> = emptyList(), gotExperts: List<FloatArray?> = emptyList()): ParityResult {
        require(expected.isNotEmpty() && expected.size == got.size) { "parity: ${expected.size} references for ${got.size} results" }
        var worst = 0.0
        var agree = 0
        for (i in expected.indices) {
            require(expected[i].size == got[i].size) { "parity: image $i has ${got[i].size} logits, expected ${expected[i].size}" }
            for (j in expected[i].indices) worst = maxOf(worst, Math.abs(expected[i][j].toDouble() - got[i][j].toDouble()))
            if (Postprocess.topK(expected[i], 1)[0] == Postprocess.topK(got[i], 1)[0]) agree++
        }
        val pairs = expectedExperts.zip(gotExperts).filter { (e, g) -> e != null && g != null }
        val experts = pairs.count { (e, g) -> Postprocess.topK(e!!, 1)[0] == Postprocess.topK(g!!, 1)[0] }
        return ParityResult(worst, agree, expected.size, tolerance, if (pairs.isEmpty()) null else experts, pairs.size)
    }

    /** Feed every parity image through [logitsOf] (the app's runtime) and compare with the stored logits. */
    fun run(set: ParitySet, input: InputSpec, logitsOf: (FloatArray) -> FloatArray): ParityResult =
        runWithExperts(set, input, false) { logitsOf(it) to null }

    /**
     * As [run], with the router's expert probabilities ([outputsOf] gives logits and expert_probs or
     * null) and the tolerance widened when the runtime is [accelerated] (GPU / Neural Engine may run fp16).
     */
    fun runWithExperts(set: ParitySet, input: InputSpec, accelerated: Boolean,
                       outputsOf: (FloatArray) -> Pair<FloatArray, FloatArray?>): ParityResult {
        val got = set.images.map { outputsOf(Preprocess.toInput(it.rgb, input, cropFraction = 1.0)) }
        return compare(set.images.map { it.logits }, got.map { it.first }, tolerance(set.maxAbsDiffTol, accelerated),
            set.images.map { it.expertProbs }, got.map { it.second })
    }
}
