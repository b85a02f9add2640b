package ai.mvmoe.demo

import ai.mvmoe.demo.core.RgbImage
import android.graphics.Bitmap
import android.graphics.ImageDecoder
import android.graphics.Matrix
import android.net.Uri
import android.content.Context
import android.os.Build
import android.provider.MediaStore
import androidx.camera.core.ImageProxy

/** Android images -> RgbImage, the input of the platform-free preprocessing (ai.mvmoe.demo.core). */
object ImageUtils {
    fun rgb(bitmap: Bitmap): RgbImage {
        val b = if (bitmap.config == Bitmap.Config.ARGB_8888) bitmap else bitmap.copy(Bitmap.Config.ARGB_8888, false)
        val px = IntArray(b.width * b.height)
        b.getPixels(px, 0, b.width, 0, 0, b.width, b.height)
        return RgbImage.fromArgb(b.width, b.height, px)
    }

    /** A CameraX frame (RGBA_8888 analysis output), rotated upright. */
    fun rgb(image: ImageProxy): RgbImage {
        val bmp = image.toBitmap()
        val deg = image.imageInfo.rotationDegrees
        if (deg == 0) return rgb(bmp)
        val m = Matrix().apply { postRotate(deg.toFloat()) }
        return rgb(Bitmap.createBitmap(bmp, 0, 0, bmp.width, bmp.height, m, true))
    }

    /**
     * A picked photo, decoded to software ARGB_8888 (EXIF orientation applied by ImageDecoder) and
     * downsampled so its short side is about [shortSide] pixels: no full-resolution bitmap in memory.
     * Call off the main thread.
     */
    fun load(context: Context, uri: Uri, shortSide: Int = 512): Bitmap =
        if (Build.VERSION.SDK_INT >= 28) {
            ImageDecoder.decodeBitmap(ImageDecoder.createSource(context.contentResolver, uri)) { d, info, _ ->
                d.allocator = ImageDecoder.ALLOCATOR_SOFTWARE
                val (w, h) = info.size.width to info.size.height
                val scale = shortSide.toDouble() / minOf(w, h)
                if (scale < 1.0) d.setTargetSize(maxOf(1, (w * scale).toInt()), maxOf(1, (h * scale).toInt()))
            }
        } else {
            @Suppress("DEPRECATION")
            MediaStore.Images.Media.getBitmap(context.contentResolver, uri)
        }

    /** The bundled sample image (assets/sample/), for a prediction without a camera. */
    fun sample(context: Context, name: String): Bitmap =
        context.assets.open("sample/$name").use { android.graphics.BitmapFactory.decodeStream(it) }
}
