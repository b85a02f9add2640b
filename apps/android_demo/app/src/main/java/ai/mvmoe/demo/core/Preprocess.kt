package ai.mvmoe.demo.core

/**
 * App preprocessing, identical to apps/golden/make_golden.py (docs/apps.md, "The app preprocessing"):
 * [invert colours] -> center-crop a square of crop_fraction of the short side -> bilinear resize
 * (half-pixel centres, no antialias) -> RGB / scale -> (x - mean) / std -> the declared layout. With
 * preprocessing baked into the model the app stops after the resize and feeds raw [0, 255] floats.
 *
 * Platform-free: the Android side converts a Bitmap to [RgbImage] (ARGB ints) and nothing else.
 */
class RgbImage(val width: Int, val height: Int, val rgb: ByteArray) {
    init {
        require(width > 0 && height > 0) { "image must be non-empty, got ${width}x$height" }
        require(rgb.size == width * height * 3) { "rgb must hold width*height*3 bytes, got ${rgb.size}" }
    }

    /** Channel c (0=R, 1=G, 2=B) of pixel (y, x) as 0..255. */
    fun at(y: Int, x: Int, c: Int): Int = rgb[(y * width + x) * 3 + c].toInt() and 0xff

    companion object {
        /** From packed ARGB ints (Android's Bitmap.getPixels), row-major. */
        fun fromArgb(width: Int, height: Int, argb: IntArray): RgbImage {
            val out = ByteArray(width * height * 3)
            for (i in argb.indices) {
                val p = argb[i]
                out[3 * i] = (p shr 16 and 0xff).toByte()
                out[3 * i + 1] = (p shr 8 and 0xff).toByte()
                out[3 * i + 2] = (p and 0xff).toByte()
            }
            return RgbImage(width, height, out)
        }
    }
}

/** A centred square; odd remainders leave the extra row/column at the bottom/right. */
data class CropBox(val top: Int, val left: Int, val side: Int)

object Preprocess {
    /** Side round(min(h, w) * cropFraction), halves up, at least 1 pixel. */
    fun centerCropBox(height: Int, width: Int, cropFraction: Double = 1.0): CropBox {
        val short = minOf(height, width)
        val side = if (cropFraction == 1.0) short else minOf(short, maxOf(1, Math.floor(short * cropFraction + 0.5).toInt()))
        return CropBox((height - side) / 2, (width - side) / 2, side)
    }

    /** Source taps for one axis: i0, i1 and the weight of i1 (half-pixel centres, clamped at 0). */
    private class Taps(nOut: Int, nIn: Int) {
        val i0 = IntArray(nOut)
        val i1 = IntArray(nOut)
        val frac = DoubleArray(nOut)

        init {
            val ratio = nIn.toDouble() / nOut
            for (o in 0 until nOut) {
                val src = maxOf((o + 0.5) * ratio - 0.5, 0.0)
                val f = minOf(Math.floor(src).toInt(), nIn - 1)
                i0[o] = f
                i1[o] = minOf(f + 1, nIn - 1)
                frac[o] = src - f
            }
        }
    }

    /**
     * Image -> flat float32 model input of shape input.shape, in input.layout.
     * The resize reads the crop window in place (no intermediate bitmap). [invert] maps v -> 255 - v
     * first (a photo of dark ink for a light-on-dark model); [cropFraction] defaults to the metadata's
     * (the parity set passes 1.0: its images are already model-size).
     */
    fun toInput(image: RgbImage, input: InputSpec, invert: Boolean = false,
                cropFraction: Double = input.cropFraction): FloatArray {
        val h = input.height
        val w = input.width
        val box = centerCropBox(image.height, image.width, cropFraction)
        val ty = Taps(h, box.side)
        val tx = Taps(w, box.side)
        val out = FloatArray(3 * h * w)
        val baked = input.preprocessingBakedIn
        for (y in 0 until h) {
            val y0 = box.top + ty.i0[y]
            val y1 = box.top + ty.i1[y]
            val fy = ty.frac[y]
            for (x in 0 until w) {
                val x0 = box.left + tx.i0[x]
                val x1 = box.left + tx.i1[x]
                val fx = tx.frac[x]
                for (c in 0 until 3) {
                    val top = image.at(y0, x0, c) * (1 - fx) + image.at(y0, x1, c) * fx
                    val bot = image.at(y1, x0, c) * (1 - fx) + image.at(y1, x1, c) * fx
                    var v = top * (1 - fy) + bot * fy  // in [0, 255]
                    if (invert) v = 255.0 - v  // linear, so the same as inverting the source bytes
                    if (!baked) v = (v / input.scale - input.mean[c]) / input.std[c]
                    val idx = if (input.layout == Layout.NCHW) (c * h + y) * w + x else (y * w + x) * 3 + c
                    out[idx] = v.toFloat()
                }
            }
        }
        return out
    }
}
