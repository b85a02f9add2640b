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

    /** A picked photo, decoded to software ARGB_8888 (EXIF orientation applied by ImageDecoder). */
    fun load(context: Context, uri: Uri): Bitmap =
        if (Build.VERSION.SDK_INT >= 28) {
            ImageDecoder.decodeBitmap(ImageDecoder.createSource(context.contentResolver, uri)) { d, _, _ ->
                d.allocator = ImageDecoder.ALLOCATOR_SOFTWARE
            }
        } else {
            @Suppress("DEPRECATION")
            MediaStore.Images.Media.getBitmap(context.contentResolver, uri)
        }
}
