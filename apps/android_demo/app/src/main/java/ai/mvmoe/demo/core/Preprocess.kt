package ai.mvmoe.demo.core

/**
 * App preprocessing, identical to apps/golden/make_golden.py (docs/apps.md, "The app preprocessing"):
 * [invert colours] -> center-crop a square of crop_fraction of the short side -> antialiased bilinear
 * resize (half-pixel centres; torch's F.interpolate(antialias=True), the eval transform's resampling)
 * -> RGB / scale -> (x - mean) / std -> the declared layout. With
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

    /**
     * Antialiased bilinear (triangle filter) taps for one axis, as torch's _upsample_bilinear2d_aa:
     * scale = nIn / nOut, support = max(scale, 1), centre = scale * (o + 0.5), source pixels
     * [int(centre - support + 0.5), int(centre + support + 0.5)) clipped to the axis, weight
     * max(0, 1 - |(j - centre + 0.5) / support|), normalised to sum 1. Downscaling averages every
     * source pixel under an output pixel; upscaling is plain half-pixel bilinear.
     */
    class Taps(nOut: Int, nIn: Int) {
        val start = IntArray(nOut)
        val weights: Array<DoubleArray>

        init {
            val scale = nIn.toDouble() / nOut
            val support = maxOf(scale, 1.0)
            weights = Array(nOut) { o ->
                val centre = scale * (o + 0.5)
                val lo = maxOf((centre - support + 0.5).toInt(), 0)  // toInt truncates toward zero, like C
                val hi = minOf((centre + support + 0.5).toInt(), nIn)
                val w = DoubleArray(hi - lo) { j -> maxOf(0.0, 1.0 - Math.abs((lo + j - centre + 0.5) / support)) }
                val total = w.sum()
                if (total > 0) for (j in w.indices) w[j] /= total
                start[o] = lo
                w
            }
        }
    }

    /**
     * Image -> flat float32 model input of shape input.shape, in input.layout.
     * The resize reads the crop window in place (one row buffer of side x w x 3 doubles). [invert] maps v -> 255 - v
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
        // horizontal pass over the crop's rows: (side, w, 3), then vertical per output pixel
        val rows = DoubleArray(box.side * w * 3)
        for (r in 0 until box.side) {
            for (x in 0 until w) {
                val wx = tx.weights[x]
                for (c in 0 until 3) {
                    var acc = 0.0
                    for (j in wx.indices) acc += wx[j] * image.at(box.top + r, box.left + tx.start[x] + j, c)
                    rows[(r * w + x) * 3 + c] = acc
                }
            }
        }
        val out = FloatArray(3 * h * w)
        val baked = input.preprocessingBakedIn
        for (y in 0 until h) {
            val wy = ty.weights[y]
            for (x in 0 until w) {
                for (c in 0 until 3) {
                    var v = 0.0
                    for (i in wy.indices) v += wy[i] * rows[((ty.start[y] + i) * w + x) * 3 + c]  // in [0, 255]
                    if (invert) v = 255.0 - v  // weights sum to 1: the same as inverting the source bytes
                    if (!baked) v = (v / input.scale - input.mean[c]) / input.std[c]
                    val idx = if (input.layout == Layout.NCHW) (c * h + y) * w + x else (y * w + x) * 3 + c
                    out[idx] = v.toFloat()
                }
            }
        }
        return out
    }
}
