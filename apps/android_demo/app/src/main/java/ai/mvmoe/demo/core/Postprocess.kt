package ai.mvmoe.demo.core

import kotlin.math.exp

/** One ranked class: index into the labels, its name and softmax probability. */
data class Ranked(val index: Int, val label: String, val prob: Float)

/**
 * What the screen shows for one inference: top-k classes, the chosen expert and its superclass.
 * The superclass of an image is the one of its top expert (expert i <-> superclass i, docs/apps.md).
 */
data class Prediction(val top: List<Ranked>, val expert: Int?, val expertProb: Float?, val superclass: String?)

object Postprocess {
    /** Numerically stable softmax (subtracts the max), computed in double. */
    fun softmax(logits: FloatArray): FloatArray {
        require(logits.isNotEmpty()) { "softmax of an empty vector" }
        val m = logits.max().toDouble()
        val e = DoubleArray(logits.size) { exp(logits[it] - m) }
        val s = e.sum()
        return FloatArray(logits.size) { (e[it] / s).toFloat() }
    }

    /** Indices of the k largest values, ties broken by the lower index (like a stable sort). */
    fun topK(values: FloatArray, k: Int): IntArray =
        values.indices.sortedWith(compareByDescending<Int> { values[it] }.thenBy { it }).take(k).toIntArray()

    /**
     * The runtime's outputs (in the artifact's order) -> (logits, expert_probs or null), picked by the
     * names in the .json's `outputs`, never by length (classes may equal experts).
     */
    fun splitOutputs(meta: ModelMetadata, outs: List<FloatArray>): Pair<FloatArray, FloatArray?> {
        require(outs.size == meta.outputNames.size) { "model returned ${outs.size} outputs, the .json names ${meta.outputNames}" }
        val logits = outs[meta.outputIndex("logits")]
        val e = meta.outputIndex("expert_probs")
        return logits to (if (e >= 0 && meta.hasExpertProbs) outs[e] else null)
    }

    /**
     * Decode the model outputs. [expertProbs] is the router's softmax output (null for a dense model).
     */
    fun decode(meta: ModelMetadata, logits: FloatArray, expertProbs: FloatArray?, k: Int = 5): Prediction {
        require(logits.size == meta.numClasses) { "model returned ${logits.size} logits for ${meta.numClasses} labels" }
        val probs = softmax(logits)
        val top = topK(probs, minOf(k, probs.size)).map { Ranked(it, meta.labels[it], probs[it]) }
        if (expertProbs == null || expertProbs.isEmpty()) return Prediction(top, null, null, null)
        val e = topK(expertProbs, 1)[0]
        val name = meta.superclasses?.names?.getOrNull(e)
        return Prediction(top, e, expertProbs[e], name)
    }
}
