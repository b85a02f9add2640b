package ai.mvmoe.demo.core

/**
 * int8 quantization of one tensor end of a LiteRT program: real = scale * (q - zeroPoint). A static
 * int8 `.tflite` takes and gives int8 tensors; the app quantizes its float input and dequantizes
 * the outputs with the parameters the .json's `io_quantization` carries.
 */
data class QuantParams(val scale: Float, val zeroPoint: Int) {
    /** Round half to even (as numpy does on the desktop), shift by the zero point, clip to int8. */
    fun quantize(x: FloatArray): ByteArray = ByteArray(x.size) { i ->
        (Math.rint((x[i] / scale).toDouble()) + zeroPoint).coerceIn(-128.0, 127.0).toInt().toByte()
    }

    fun dequantize(q: ByteArray): FloatArray = FloatArray(q.size) { i -> (q[i] - zeroPoint) * scale }
}

/**
 * A program's ends in signature order (inputs args_0 ..., outputs output_0 ...): [QuantParams] for
 * an int8 end, null for a float end (or an int32 index). Absent from the .json: every end is float.
 */
data class IoQuantization(val inputs: List<QuantParams?>, val outputs: List<QuantParams?>) {
    fun input(i: Int): QuantParams? = inputs.getOrNull(i)
    fun output(i: Int): QuantParams? = outputs.getOrNull(i)

    companion object {
        /** The .json's {"inputs": [...], "outputs": [...]}, each {dtype, scale?, zero_point?}; null if absent. */
        fun fromMap(m: Map<*, *>?, path: String): IoQuantization? {
            m ?: return null
            return IoQuantization(ends(m["inputs"], "$path.inputs"), ends(m["outputs"], "$path.outputs"))
        }

        private fun ends(v: Any?, path: String): List<QuantParams?> {
            val l = v as? List<*> ?: throw MetadataException("metadata: missing list '$path'")
            return l.mapIndexed { i, e ->
                val end = e as? Map<*, *> ?: throw MetadataException("metadata: '$path[$i]' is not an object")
                when (val dtype = end["dtype"]) {
                    "float32", "int32", "int64" -> null
                    "int8" -> {
                        val scale = end["scale"] as? Double
                        val zero = end["zero_point"] as? Double
                        if (scale == null || !(scale > 0.0) || zero == null || zero != Math.floor(zero) || zero !in -128.0..127.0)
                            throw MetadataException("metadata: '$path[$i]' int8 needs scale > 0 and an int8 zero_point, got $end")
                        QuantParams(scale.toFloat(), zero.toInt())
                    }
                    else -> throw MetadataException("metadata: '$path[$i]' dtype '$dtype' is not supported (float32, int32, int8)")
                }
            }
        }
    }
}
