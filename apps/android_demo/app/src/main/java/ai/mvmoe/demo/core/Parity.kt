package ai.mvmoe.demo.core

import java.util.Base64

/**
 * The parity set an artifact's .json carries (`parity_set`, docs/apps.md): a few eval images as
 * model-size RGB bytes with the PyTorch logits on them. The app runs them through its runtime at
 * load and shows "parity: max diff X, top-1 agree Y/Z" — the check of what really runs on the phone.
 */
class ParityImage(val rgb: RgbImage, val label: Int?, val logits: FloatArray)

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
                ParityImage(RgbImage(w, h, bytes), (entry["label"] as? Double)?.toInt(), logits)
            }
            return ParitySet(images, m["max_abs_diff_tol"] as? Double, (m["source"] as? String) ?: "")
        }
    }
}

/** The verdict: ok when every top-1 agrees and (no tolerance or max |diff| <= tolerance). */
data class ParityResult(val maxAbsDiff: Double, val top1Agree: Int, val total: Int, val tolerance: Double?) {
    val ok: Boolean get() = top1Agree == total && (tolerance == null || maxAbsDiff <= tolerance)

    /** One line for the UI, e.g. "parity: max diff 2.1e-06, top-1 agree 8/8 (ok)". */
    fun summary(): String = "parity: max diff ${fmt("%.2g", maxAbsDiff)}, top-1 agree $top1Agree/$total" +
        (if (ok) " (ok)" else if (top1Agree < total) " (top-1 differs)" else " (over ${fmt("%.0e", tolerance)})")

    private fun fmt(f: String, v: Double?) = String.format(java.util.Locale.ROOT, f, v)
}

object Parity {
    fun compare(expected: List<FloatArray>, got: List<FloatArray>, tolerance: Double?): ParityResult {
        require(expected.isNotEmpty() && expected.size == got.size) { "parity: ${expected.size} references for ${got.size} results" }
        var worst = 0.0
        var agree = 0
        for (i in expected.indices) {
            require(expected[i].size == got[i].size) { "parity: image $i has ${got[i].size} logits, expected ${expected[i].size}" }
            for (j in expected[i].indices) worst = maxOf(worst, Math.abs(expected[i][j].toDouble() - got[i][j].toDouble()))
            if (Postprocess.topK(expected[i], 1)[0] == Postprocess.topK(got[i], 1)[0]) agree++
        }
        return ParityResult(worst, agree, expected.size, tolerance)
    }

    /** Feed every parity image through [logitsOf] (the app's runtime) and compare with the stored logits. */
    fun run(set: ParitySet, input: InputSpec, logitsOf: (FloatArray) -> FloatArray): ParityResult {
        val got = set.images.map { logitsOf(Preprocess.toInput(it.rgb, input, cropFraction = 1.0)) }
        return compare(set.images.map { it.logits }, got, set.maxAbsDiffTol)
    }
}
