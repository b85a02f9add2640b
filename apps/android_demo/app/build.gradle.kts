import org.jetbrains.kotlin.gradle.dsl.JvmTarget

plugins {
    alias(libs.plugins.android.application)
    alias(libs.plugins.kotlin.android)
    alias(libs.plugins.kotlin.compose)
}

android {
    namespace = "ai.mvmoe.demo"
    compileSdk = 36  // as google-ai-edge/litert-samples with AGP 8.9.1 (README: versions and sources)

    defaultConfig {
        applicationId = "ai.mvmoe.demo"
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "1.0"
        // The runtimes bundled in the APK: the app refuses artifacts whose .json needs newer ones.
        buildConfigField("String", "EXECUTORCH_VERSION", "\"${libs.versions.executorch.get()}\"")
        buildConfigField("String", "LITERT_VERSION", "\"${libs.versions.litert.get()}\"")
    }

    buildTypes {
        release {
            isMinifyEnabled = false
            signingConfig = signingConfigs.getByName("debug") // a demo: installable release build without a keystore
        }
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    buildFeatures { compose = true; buildConfig = true }
    // Models are memory-mapped from the APK by LiteRT: keep them uncompressed.
    androidResources { noCompress += listOf("tflite", "pte") }
    // Native libraries stay uncompressed in the APK and are loaded from it (the default since AGP 3.6;
    // this replaces android:extractNativeLibs="false" in the manifest, which AGP now warns about).
    packaging { jniLibs { useLegacyPackaging = false } }
}

// kotlinOptions {} is deprecated (an error from Kotlin 2.3 on); compilerOptions is the supported DSL.
kotlin { compilerOptions { jvmTarget.set(JvmTarget.JVM_17) } }

// The platform-free logic (ai.mvmoe.demo.core) is tested on the JVM against apps/golden/golden.json.
tasks.withType<Test>().configureEach {
    systemProperty("mvmoe.golden", rootProject.file("../golden/golden.json").absolutePath)
}

dependencies {
    implementation(libs.androidx.activity.compose)
    implementation(libs.androidx.lifecycle.runtime)
    implementation(libs.androidx.lifecycle.runtime.compose)  // androidx.lifecycle.compose.LocalLifecycleOwner
    implementation(platform(libs.compose.bom))
    implementation(libs.compose.ui)
    implementation(libs.compose.material3)
    implementation(libs.camera.core)
    implementation(libs.camera.camera2)
    implementation(libs.camera.lifecycle)
    implementation(libs.camera.view)
    implementation(libs.litert)
    implementation(libs.litert.gpu)
    implementation(libs.executorch)
    testImplementation(libs.junit)
}
