// Copy buttons: <button data-copy="ID"> copies the text of the element with that id.
// The console's only hand-written script; everything else is htmx attributes.
document.addEventListener("click", function (event) {
  var button = event.target.closest("[data-copy]");
  if (!button) return;
  var source = document.getElementById(button.getAttribute("data-copy"));
  if (!source || !navigator.clipboard) return;
  navigator.clipboard.writeText(source.textContent).then(function () {
    button.textContent = "Copied";
    button.setAttribute("data-copied", "true");
  });
});
